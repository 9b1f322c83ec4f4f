use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = faultd::cli::Cli::parse();
    if let Err(e) = faultd::cli::run(cli).await {
        eprintln!("faultctl: {e:#}");
        std::process::exit(1);
    }
}
