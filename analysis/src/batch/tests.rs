use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::gates::{Gates, ResponseCodes};
use crate::sequential::RolloutEvidence;

const AT: i64 = 1_800_000_000;

fn request(service: &str, step_age_s: i64, rule: Rule) -> CheckRequest {
    let at = Timestamp::from_second(AT).unwrap();
    CheckRequest {
        namespace: "shop".to_string(),
        service: service.to_string(),
        canary_service: service.to_string(),
        stable_service: service.to_string(),
        canary_version: "v2".to_string(),
        stable_version: "v1".to_string(),
        step_started_at: at - jiff::SignedDuration::from_secs(step_age_s),
        evaluate_at: at,
        min_window: Duration::from_secs(4),
        gates: Gates {
            rule,
            ..Gates::default()
        },
        reporter: Reporter::Destination,
        custom: Vec::new(),
        earlier: RolloutEvidence::default(),
        pass_at: 100.0,
    }
}

fn at() -> Timestamp {
    Timestamp::from_second(AT).unwrap()
}

fn series(service: &str, version: &str, code: &str, value: f64) -> Series {
    Series {
        labels: BTreeMap::from([
            (SERVICE_LABEL.to_string(), service.to_string()),
            (VERSION_LABEL.to_string(), version.to_string()),
            ("response_code".to_string(), code.to_string()),
        ]),
        value,
    }
}

#[test]
fn checks_whose_steps_began_in_the_same_quantum_share_their_queries() {
    let requests = [
        request("a", 60, Rule::Sequential),
        request("b", 61, Rule::Sequential),
        request("c", 30, Rule::Sequential),
    ];
    let groups = plan_round(&requests, at(), Duration::from_secs(5));
    assert_eq!(groups.len(), 2, "{groups:#?}");
    let g30 = groups.iter().find(|g| g.members == [2]).unwrap();
    assert_eq!(g30.window.duration(), Duration::from_secs(30));
    let g60 = groups.iter().find(|g| g.members == [0, 1]).unwrap();
    assert_eq!(g60.window.duration(), Duration::from_secs(60));
    assert!(
        g60.requests_by_code
            .contains(r#"destination_service_name=~"a|b""#),
        "{}",
        g60.requests_by_code
    );
    assert!(g60.buckets.is_some(), "the sequential rule reads buckets");
    assert!(
        g60.latency.is_empty(),
        "only the threshold rule reads a quantile"
    );
}

#[test]
fn the_threshold_rule_adds_one_latency_query_per_quantile() {
    let mut other = request("b", 60, Rule::Threshold);
    other.gates.latency_quantile = 0.95;
    let requests = [
        request("a", 60, Rule::Threshold),
        other,
        request("c", 60, Rule::Threshold),
    ];
    let groups = plan_round(&requests, at(), Duration::from_secs(5));
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].latency.len(), 2);
    assert!(
        groups[0].buckets.is_none(),
        "no slow-share gate, no buckets"
    );
}

#[test]
fn the_queries_of_a_round_do_not_grow_with_the_number_of_services() {
    // 1,000 checks whose steps began anywhere in the last two minutes: at most one group
    // per 5 s quantum, three queries each (counts, buckets; no threshold members).
    let requests: Vec<CheckRequest> = (0..1000)
        .map(|i| request(&format!("svc-{i}"), 4 + (i * 7919) % 116, Rule::Sequential))
        .collect();
    let groups = plan_round(&requests, at(), Duration::from_secs(5));
    let queries: usize = groups
        .iter()
        .map(|g| 1 + usize::from(g.buckets.is_some()) + g.latency.len())
        .sum();
    assert!(groups.len() <= 120 / 5 + 1, "{} groups", groups.len());
    assert!(queries <= 2 * (120 / 5 + 1), "{queries} queries");
    let members: usize = groups.iter().map(|g| g.members.len()).sum();
    assert_eq!(members, 1000, "every check is in exactly one group");
}

#[test]
fn names_are_matched_literally_in_the_fleet_regex() {
    let requests = [
        request("a.b", 60, Rule::Sequential),
        request("a|b", 60, Rule::Sequential),
    ];
    let groups = plan_round(&requests, at(), Duration::from_secs(5));
    assert!(
        groups[0]
            .requests_by_code
            .contains(r#"destination_service_name=~"a\\.b|a\\|b""#),
        "{}",
        groups[0].requests_by_code
    );
}

#[test]
fn counts_are_split_by_version_and_the_services_own_error_codes() {
    let all = [
        series("a", "v2", "200", 90.0),
        series("a", "v2", "503", 6.0),
        series("a", "v2", "404", 4.0),
        series("a", "v1", "200", 1000.0),
        series("a", "v0", "500", 7.0),
        series("ab", "v2", "500", 50.0),
    ];
    let mut req = request("a", 60, Rule::Sequential);
    let (requests, errors) = split_counts(&all, &req);
    assert_eq!(
        requests,
        [
            Series::of_version("v1", 1000.0),
            Series::of_version("v2", 100.0)
        ]
    );
    assert_eq!(
        errors,
        [Series::of_version("v2", 6.0)],
        "no error series for v1"
    );

    req.gates.error_codes = "5..|404".parse::<ResponseCodes>().unwrap();
    let (_, errors) = split_counts(&all, &req);
    assert_eq!(errors, [Series::of_version("v2", 10.0)]);
}

#[test]
fn a_host_level_split_reads_each_version_under_its_own_service() {
    let all = [
        series("shop-canary", "v2", "200", 95.0),
        series("shop-canary", "v2", "503", 5.0),
        series("shop-stable", "v1", "200", 900.0),
        // Mid-promotion, the stable Service already serves v2: not the canary's.
        series("shop-stable", "v2", "500", 40.0),
        // The opted-in Service's own name carries other traffic: not the split's.
        series("shop", "v1", "200", 10.0),
    ];
    let mut req = request("shop", 60, Rule::Sequential);
    req.canary_service = "shop-canary".into();
    req.stable_service = "shop-stable".into();
    let (requests, errors) = split_counts(&all, &req);
    assert_eq!(
        requests,
        [
            Series::of_version("v1", 900.0),
            Series::of_version("v2", 100.0)
        ]
    );
    assert_eq!(errors, [Series::of_version("v2", 5.0)]);
    // The round's one query selects both Services.
    let groups = plan_round(&[req], at(), Duration::from_secs(5));
    assert!(
        groups[0]
            .requests_by_code
            .contains(r#"destination_service_name=~"shop-canary|shop-stable""#),
        "{}",
        groups[0].requests_by_code
    );
}

proptest! {
    /// The documented bound of the approximation: a window at least `floor` long moves
    /// by at most half a quantum and never below the floor; a shorter one is unchanged.
    #[test]
    fn a_grouped_window_is_within_half_a_quantum(
        seconds in 1u64..100_000, quantum in 1u64..600, floor in 1u64..600,
    ) {
        let at = at();
        let start = at - jiff::SignedDuration::from_secs(seconds as i64);
        let window = Window::since(start, at, Duration::from_secs(floor));
        let grouped = window.grouped(Duration::from_secs(quantum), Duration::from_secs(floor));
        let (w, g) = (window.duration().as_secs(), grouped.duration().as_secs());
        prop_assert!(g >= floor);
        if w <= floor {
            prop_assert_eq!(g, w);
        } else {
            prop_assert!(w.abs_diff(g) <= quantum / 2, "{w} -> {g}");
        }
    }
}
