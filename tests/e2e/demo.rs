//! `make demo` in CI's shortened mode: from nothing to a healthy v2 promoted and a v3
//! with 20% errors aborted at its first step, followed with `weir watch`.

use std::path::PathBuf;

use weir_demo::{Options, run};

#[tokio::test(flavor = "multi_thread")]
async fn demo_promotes_the_healthy_release_and_aborts_the_bad_one() -> anyhow::Result<()> {
    let summary = run(&Options {
        weir: PathBuf::from(env!("CARGO_BIN_EXE_weir")),
        short: true,
        keep: false,
    })
    .await?;
    println!("{}", summary.describe());

    let healthy = &summary.healthy;
    assert_eq!(
        healthy.watch_exit,
        Some(0),
        "`weir watch` of v2:\n{}",
        healthy.watch_output
    );
    assert!(
        healthy.watch_output.contains("checkout: v2 promoted"),
        "{}",
        healthy.watch_output
    );
    assert!(
        healthy.watch_output.contains("step 3/3, canary weight 50%"),
        "every step shown:\n{}",
        healthy.watch_output
    );

    let faulty = &summary.faulty;
    assert_eq!(
        faulty.watch_exit,
        Some(1),
        "`weir watch` of v3:\n{}",
        faulty.watch_output
    );
    assert!(
        faulty.watch_output.contains("checkout: v3 aborted"),
        "{}",
        faulty.watch_output
    );
    assert!(
        !faulty.watch_output.contains("step 2/3"),
        "aborted at its first step:\n{}",
        faulty.watch_output
    );
    assert_eq!(faulty.status["phase"], "Aborted", "{}", faulty.status);
    assert_eq!(faulty.status["stable"], "v2", "{}", faulty.status);
    assert_eq!(faulty.status["canary"], "v3", "{}", faulty.status);
    // Either error gate may abort it first: the SLO's or the comparison with stable.
    let message = faulty.status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("error-rate") || message.contains("errors-vs-stable"),
        "{}",
        faulty.status
    );

    assert!(
        summary.final_status.contains("Aborted"),
        "{}",
        summary.final_status
    );
    for series in [
        r#"weir_rollouts_total{service="checkout",outcome="promoted"} 1"#,
        r#"weir_rollouts_total{service="checkout",outcome="aborted"} 1"#,
    ] {
        assert!(
            summary.metrics.iter().any(|l| l == series),
            "no {series} in {:?}",
            summary.metrics
        );
    }
    Ok(())
}
