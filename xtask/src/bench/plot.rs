//! The PNG beside BENCHMARKS.md: per-packet cost of each program (left) and TCP throughput
//! (right) against the number of installed faults.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::coord::ranged1d::{SegmentValue, SegmentedCoord};
use plotters::coord::types::{RangedCoordf64, RangedCoordi32};
use plotters::prelude::*;

use super::packet_cost::PROGRAMS;
use super::{Results, median};

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];
const GREY: RGBColor = RGBColor(120, 120, 120);
const TARGET: RGBColor = RGBColor(214, 39, 40);

/// "0", "10", "1k", "100k".
fn label(faults: usize) -> String {
    if faults >= 1000 && faults.is_multiple_of(1000) {
        format!("{}k", faults / 1000)
    } else {
        faults.to_string()
    }
}

pub fn draw(r: &Results, path: &Path) -> anyhow::Result<()> {
    // No system font is needed: DejaVu Sans comes with the binary.
    let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    draw_inner(r, path)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

fn draw_inner(r: &Results, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "faultd: pass-through cost against installed faults — Linux {}, {} cores, {}{}",
        r.machine.kernel,
        r.machine.cores,
        r.machine.date,
        if r.quick { " (quick mode)" } else { "" }
    );
    let root = root.titled(&title, (FONT, 22).into_font().style(FontStyle::Bold))?;
    let (left, right) = root.split_horizontally(700);
    let n = r.levels.len() as i32;
    let at = |i: usize| SegmentValue::CenterOf(i as i32);
    let x_label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => r
            .levels
            .get(*i as usize)
            .map(|l| label(l.faults))
            .unwrap_or_default(),
        _ => String::new(),
    };

    // Left: ns per packet of each program, and of a program that does nothing.
    let costs: Vec<(&str, Vec<Vec<f64>>)> = PROGRAMS
        .iter()
        .map(|p| {
            let v = r
                .levels
                .iter()
                .map(|l| l.cost_ns.get(*p).cloned().unwrap_or_default())
                .collect();
            (*p, v)
        })
        // A program that never ran (XDP is not attached to lo) has nothing to plot.
        .filter(|(_, v): &(&str, Vec<Vec<f64>>)| v.iter().any(|runs| !runs.is_empty()))
        .collect();
    let noops: [(&str, Vec<Vec<f64>>, i32); 2] = [
        (
            "a no-op program at egress, measured alike",
            r.levels.iter().map(|l| l.baseline_ns.clone()).collect(),
            5,
        ),
        (
            "a no-op program at ingress, measured alike",
            r.levels
                .iter()
                .map(|l| l.baseline_ingress_ns.clone())
                .collect(),
            2,
        ),
    ];
    // From the medians, with room for the legend above the lines: a round slowed down by
    // other work on the machine would squash them (its whisker is cut at the top).
    let top = costs
        .iter()
        .flat_map(|(_, v)| medians(v))
        .filter(|x| x.is_finite())
        .fold(100.0f64, f64::max)
        * 1.6;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "per-packet cost of each program (median, min–max)",
            (FONT, 18),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(r.levels.len() + 1)
        .x_label_formatter(&x_label)
        .x_desc("faults installed on other ports")
        .y_desc("ns per packet (run_time_ns / run_cnt)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    for (k, (name, v)) in costs.iter().enumerate() {
        series(&mut chart, name, v, COLORS[k % COLORS.len()], top)?;
    }
    for &(label, ref noop, dash) in &noops {
        chart
            .draw_series(DashedLineSeries::new(
                median_points(noop),
                dash,
                4,
                GREY.stroke_width(2),
            ))?
            .label(label)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREY.stroke_width(2)));
    }
    // Last, so that a program right at the target does not hide it. Issue #9's target is 30 ns
    // above the no-op at the program's hook; the line follows the lower of the two no-ops.
    let (egress, ingress) = (median_points(&noops[0].1), median_points(&noops[1].1));
    let target: Vec<_> = egress
        .iter()
        .zip(&ingress)
        .map(|((x, e), (_, i))| (x.clone(), e.min(*i) + 30.0))
        .collect();
    chart
        .draw_series(DashedLineSeries::new(target, 8, 6, TARGET.stroke_width(2)))?
        .label("target: the no-op + 30 ns")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], TARGET.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font((FONT, 14))
        .draw()?;

    // Right: throughput with faultd beside no faultd, and the alternatives.
    let faultd: Vec<Vec<f64>> = r.levels.iter().map(|l| l.faultd_gbps.clone()).collect();
    let bare: Vec<Vec<f64>> = r.levels.iter().map(|l| l.bare_gbps.clone()).collect();
    let ci = r
        .levels
        .iter()
        .position(|l| l.faults == r.compare.faults)
        .unwrap_or(0);
    let iptables = median(&r.compare.iptables);
    let proxy = median(&r.compare.proxy);
    let top = faultd
        .iter()
        .chain(&bare)
        .flatten()
        .chain([&iptables, &proxy])
        .copied()
        .filter(|x| x.is_finite())
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "TCP throughput, port without faults (median, min–max)",
            (FONT, 18),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(r.levels.len() + 1)
        .x_label_formatter(&x_label)
        .x_desc("faults installed on other ports (or iptables rules)")
        .y_desc("Gbit/s over loopback")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    series(&mut chart, "faultd attached", &faultd, COLORS[0], top)?;
    series(&mut chart, "no faultd", &bare, GREY, top)?;
    let rules = super::report::count(r.compare.faults);
    if iptables.is_finite() {
        let color = COLORS[1];
        chart
            .draw_series([TriangleMarker::new((at(ci), iptables), 9, color.filled())])?
            .label(format!("iptables, {rules} DROP rules"))
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 7, color.filled()));
    }
    if proxy.is_finite() {
        let color = COLORS[3];
        chart
            .draw_series([Cross::new((at(ci), proxy), 8, color.stroke_width(3))])?
            .label("userspace TCP proxy")
            .legend(move |(x, y)| Cross::new((x + 10, y), 6, color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font((FONT, 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn medians(v: &[Vec<f64>]) -> Vec<f64> {
    v.iter().map(|x| median(x)).collect()
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<SegmentedCoord<RangedCoordi32>, RangedCoordf64>,
>;

/// A line through the medians of each level's rounds, a dot on each, and a whisker from the
/// lowest round to the highest.
fn series(
    chart: &mut Chart<'_, '_>,
    name: &str,
    rounds: &[Vec<f64>],
    color: RGBColor,
    top: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let at = |i: usize| SegmentValue::CenterOf(i as i32);
    let points = median_points(rounds);
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
    chart.draw_series(
        points
            .iter()
            .map(|p| Circle::new(p.clone(), 5, color.filled())),
    )?;
    chart.draw_series(
        rounds
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() > 1)
            .map(|(i, v)| {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max).min(top);
                PathElement::new([(at(i), lo), (at(i), hi)], color.mix(0.6).stroke_width(2))
            }),
    )?;
    Ok(())
}

/// Each level's median as a point at the level's segment, leaving out levels without figures.
fn median_points(rounds: &[Vec<f64>]) -> Vec<(SegmentValue<i32>, f64)> {
    medians(rounds)
        .into_iter()
        .enumerate()
        .filter(|(_, y)| y.is_finite())
        .map(|(i, y)| (SegmentValue::CenterOf(i as i32), y))
        .collect()
}
