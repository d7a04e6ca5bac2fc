//! Regression tests for the decoding faults of issue 15, against the real binary: each field
//! case in `tests/field-cases/` is replayed with `journeyd replay` and the figures of its
//! `expected.txt` are asserted. Engine faults are tested in
//! `crates/journey-core/tests/field_cases.rs`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `journeyd replay` of one case with its rules, one worker; the printed JSON.
fn replay_case(case: &str, extra: &[&str]) -> Value {
    let dir = format!("tests/field-cases/{case}");
    let out = Command::new(env!("CARGO_BIN_EXE_journeyd"))
        .current_dir(repo())
        .env("JOURNEYD_RUNTIME__WORKERS", "1")
        .env("JOURNEYD_LOG__LEVEL", "warn")
        .args(["replay", "--rules", &format!("{dir}/rules.toml")])
        .args(extra)
        .arg(format!("{dir}/events.ndjson"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn touchpoint<'v>(v: &'v Value, name: &str) -> &'v Value {
    v["touchpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap()
}

/// `from>to:count`, sorted, as `expected.txt` writes transitions.
fn transitions(v: &Value) -> Vec<String> {
    let mut list: Vec<String> = v["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}>{}:{}",
                t["from"].as_str().unwrap(),
                t["to"].as_str().unwrap(),
                t["count"]
            )
        })
        .collect();
    list.sort();
    list
}

fn reached(v: &Value) -> Vec<i64> {
    v["funnel"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reached"].as_i64().unwrap())
        .collect()
}

/// 03: a record dated 2099 is rejected as `timestamp_in_future` when decoded, so it moves no
/// watermark and the honest records around it are neither late nor cut off.
#[test]
fn future_dated_event_is_rejected_and_moves_no_watermark() {
    let v = replay_case("03-future-dated-event-poisons-watermark", &[]);
    assert_eq!(v["events"]["late"], 0);
    assert_eq!(v["events"]["rejected"], json!({ "timestamp_in_future": 1 }));
    assert_eq!(v["events"]["accepted"], 4);
    let order = touchpoint(&v, "order_confirmed");
    assert_eq!(
        (&order["sessions"], &order["completions"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(touchpoint(&v, "product_page")["drop_offs"], 1);
    assert_eq!(
        transitions(&v),
        [
            "(start)>blog_post:1",
            "(start)>product_page:1",
            "blog_post>product_page:1",
            "order_confirmed>(exit):1",
            "product_page>(exit):1",
            "product_page>order_confirmed:1",
        ]
    );
    assert!(
        v["to"].as_str().is_some_and(|t| t < "2096"),
        "the figures end with the honest data, not in 2099"
    );
}

/// 05: `"Infinity"`, `"inf"`, `"-infinity"` and `"NaN"` are not numeric strings: they
/// satisfy no numeric comparison, so those four events stay unclassified.
#[test]
fn infinity_and_nan_strings_are_not_numbers() {
    let v = replay_case("05-infinity-nan-strings-as-numbers", &[]);
    assert_eq!(v["events"]["accepted"], 6);
    assert_eq!(touchpoint(&v, "big_cart")["visits"], 1);
    assert_eq!(touchpoint(&v, "small_cart")["visits"], 1);
    assert_eq!(v["events"]["unclassified"], 4);
    assert_eq!(v["funnel"]["journeys"], 2);
}

/// 06: `null` counts as absent for every optional field: `"source": null` takes the default
/// source like an absent one, as `"event_id": null` and `"attributes": null` always did.
#[test]
fn null_optional_fields_count_as_absent() {
    let v = replay_case("06-null-optional-field-rejected", &["--source", "web"]);
    assert_eq!(v["events"]["rejected"], json!({}));
    assert_eq!(v["events"]["accepted"], 3);
    assert_eq!(touchpoint(&v, "order_confirmed")["completions"], 1);
    assert_eq!(touchpoint(&v, "blog_post")["visits"], 1);
    assert_eq!(touchpoint(&v, "product_page")["visits"], 1);
    assert_eq!(v["funnel"]["journeys"], 2);
    assert_eq!(
        reached(&v),
        [2, 1, 1, 0, 0],
        "z-1 at decision, z-2 at awareness"
    );
}

/// 10: a device clock one year fast. Without `timestamp`, the order is dated
/// `receivedAt − (sentAt − originalTimestamp)` = 2026-11-02T10:01:01Z and joins u-7's session
/// (it used to be dated 2027 by `originalTimestamp`: a second session, a drop-off at the
/// product page, a figure span reaching into 2027).
#[test]
fn segment_clock_skew_is_corrected() {
    let v = replay_case(
        "10-segment-clock-skew-correction",
        &["--format", "segment", "--source", "web"],
    );
    assert_eq!(v["funnel"]["journeys"], 1, "{v}");
    assert_eq!(v["sessions"], 1, "{v}");
    assert_eq!(
        transitions(&v),
        [
            "(start)>product_page:1",
            "order_confirmed>(exit):1",
            "product_page>order_confirmed:1"
        ]
    );
    assert_eq!(touchpoint(&v, "product_page")["drop_offs"], 0);
    assert_eq!(touchpoint(&v, "order_confirmed")["completions"], 1);
    // 2026-11-02T11:00:00Z, as expected.txt says (its "1793620800000" is 12:00, a typo there).
    assert_eq!(v["to"], json!("2026-11-02T11:00:00.000Z"), "{v}");
}

/// Case 04 through the binary, for several task counts: the late order of the evicted customer
/// starts no journey however customers are spread over tasks (a file is one stream whose event
/// time every task shares), so the figures never depend on `runtime.tasks`.
#[test]
fn late_event_after_eviction_starts_no_journey_for_any_task_count() {
    let dir = "tests/field-cases/04-late-event-after-eviction-new-journey";
    for tasks in ["1", "2", "5", "7", "12", "64"] {
        let out = Command::new(env!("CARGO_BIN_EXE_journeyd"))
            .current_dir(repo())
            .env("JOURNEYD_RUNTIME__TASKS", tasks)
            .env("JOURNEYD_LOG__LEVEL", "warn")
            .args(["replay", "--rules", &format!("{dir}/rules.toml")])
            .arg(format!("{dir}/events.ndjson"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let reached: Vec<u64> = v["funnel"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["reached"].as_u64().unwrap())
            .collect();
        assert_eq!(reached, [2, 1, 0, 0, 0], "runtime.tasks = {tasks}");
        assert_eq!(v["events"]["late"], 1, "runtime.tasks = {tasks}");
        let order = touchpoint(&v, "order_confirmed");
        assert_eq!(
            (order["visits"].as_u64(), order["sessions"].as_u64()),
            (Some(1), Some(0))
        );
    }
}
