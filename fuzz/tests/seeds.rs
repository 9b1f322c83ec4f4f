//! The seed corpus: valid requests for every action, each accepted and read back by the
//! fuzz target's own checks, and each committed in `corpus/add_fault_request/`.
//!
//! `FAULTD_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml` (re)writes them.

use std::path::Path;

use faultd_fuzz::{Outcome, check, seeds};
use prost::Message as _;

#[test]
fn seeds_are_accepted_and_committed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/add_fault_request");
    let write = std::env::var_os("FAULTD_WRITE_SEEDS").is_some_and(|v| v == "1");
    for (name, request) in seeds() {
        let bytes = request.encode_to_vec();
        assert_eq!(check(&bytes), Outcome::Accepted, "seed {name}");
        let path = dir.join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        assert_eq!(
            std::fs::read(&path).ok(),
            Some(bytes),
            "{} is missing or stale: FAULTD_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml",
            path.display()
        );
    }
}

/// The checks do refuse: a request without an action names `action`, and the protected port
/// is refused.
#[test]
fn the_checks_see_refusals() {
    let drop = seeds().remove(0).1;
    let mut no_action = drop.clone();
    no_action.spec.as_mut().unwrap().action = None;
    assert_eq!(
        check(&no_action.encode_to_vec()),
        Outcome::Invalid("action".into())
    );
    let mut protected = drop;
    protected
        .spec
        .as_mut()
        .unwrap()
        .target
        .as_mut()
        .unwrap()
        .port = faultd_fuzz::PROTECTED_PORT.into();
    assert_eq!(check(&protected.encode_to_vec()), Outcome::Protected);
    assert_eq!(check(&[0xff, 0xff, 0xff]), Outcome::NotARequest);
}

/// Every input in the corpus — the seeds and the crashes the fuzzer once found — holds.
#[test]
fn every_corpus_input_holds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/add_fault_request");
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let outcome = check(&std::fs::read(&path).unwrap());
        eprintln!("{}: {outcome:?}", path.display());
        ran += 1;
    }
    assert!(ran > 0, "no corpus in {}", dir.display());
}
