//! ICN-keyed toggles put a Veteran in the same cohort as vets-api's Flipper (CHANNELS.md §4, issue 11):
//! the SMS feature's percentage-of-actors gate, with the plain ICN as the actor id, is checked for 10,000
//! generated ICNs against Flipper's algorithm reimplemented in Python (`tests/python/flipper/bucket.py`,
//! `zlib.crc32`), run by the machine's python3. The sets must be equal, not merely the same size.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use ebg_notify::toggles::{Gates, actor_bucket, actor_in_percentage};

const SMS_FEATURE: &str = "event_bus_gateway_letter_ready_sms_notifications";
const PUSH_FEATURE: &str = "event_bus_gateway_letter_ready_push_notifications";
const ICNS: usize = 10_000;

/// SplitMix64: a fixed sequence, so every run checks the same ICNs.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `count` distinct ICN-shaped ids, `NNNNNNNNNNVNNNNNN` (ten digits starting with 10, `V`, six digits).
fn icns(count: usize) -> Vec<String> {
    let mut state = 20_261_201;
    let mut seen = BTreeSet::new();
    while seen.len() < count {
        let a = splitmix64(&mut state) % 100_000_000;
        let b = splitmix64(&mut state) % 1_000_000;
        seen.insert(format!("10{a:08}V{b:06}"));
    }
    seen.into_iter().collect()
}

/// The Python oracle's cohorts: for each percentage, the actors Flipper lets in.
fn flipper_cohorts(feature: &str, actors: &[String], percentages: &[&str]) -> Vec<BTreeSet<String>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/flipper/bucket.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(feature)
        .args(percentages)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (it is on CI and the developers' machines)");
    let input = actors.join("\n") + "\n";
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "bucket.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    percentages
        .iter()
        .map(|pct| {
            text.lines()
                .filter_map(|line| line.split_once('\t'))
                .filter(|(p, _)| p == pct)
                .map(|(_, actor)| actor.to_owned())
                .collect()
        })
        .collect()
}

/// Our cohort through the gate evaluation the toggles use (percentage of actors only).
fn our_cohort(feature: &str, actors: &[String], percentage: f64) -> BTreeSet<String> {
    let gates = Gates { percentage_of_actors: percentage, ..Gates::default() };
    let never = || 1.0;
    actors.iter().filter(|icn| gates.is_open_for(feature, Some(icn.as_str()), never)).cloned().collect()
}

#[test]
fn the_icn_keyed_sms_cohorts_equal_flippers_for_ten_thousand_icns() {
    let actors = icns(ICNS);
    assert_eq!(actors.len(), ICNS);
    assert!(actors.iter().all(|icn| icn.len() == 17 && icn.as_bytes()[10] == b'V'), "ICN-shaped");
    let percentages = ["2", "25", "2.5"];
    let flipper = flipper_cohorts(SMS_FEATURE, &actors, &percentages);
    for (pct, theirs) in percentages.iter().zip(&flipper) {
        let ours = our_cohort(SMS_FEATURE, &actors, pct.parse().unwrap());
        let only_ours: Vec<_> = ours.difference(theirs).take(5).collect();
        let only_theirs: Vec<_> = theirs.difference(&ours).take(5).collect();
        assert_eq!(ours, *theirs, "{pct}%: only ours {only_ours:?}, only Flipper's {only_theirs:?}");
    }
    // Not vacuous: the cohorts have the expected sizes (binomial, ±5 sigma) and nest.
    let (two, quarter) = (&flipper[0], &flipper[1]);
    assert!((130..=270).contains(&two.len()), "2% of 10,000 gave {}", two.len());
    assert!((2_280..=2_720).contains(&quarter.len()), "25% of 10,000 gave {}", quarter.len());
    assert!(two.is_subset(&flipper[2]) && flipper[2].is_subset(quarter), "raising the percentage only adds");
}

#[test]
fn the_push_feature_buckets_the_same_icns_independently() {
    let actors = icns(2_000);
    let flipper = flipper_cohorts(PUSH_FEATURE, &actors, &["25"]);
    assert_eq!(our_cohort(PUSH_FEATURE, &actors, 25.0), flipper[0]);
    // The feature name is part of the hash: the SMS and push cohorts of one percentage differ.
    assert_ne!(our_cohort(SMS_FEATURE, &actors, 25.0), flipper[0]);
}

/// Pinned vectors (Python `zlib.crc32`), in the style of SPEC §15, for ICN actors.
#[test]
fn icn_vectors() {
    const VECTORS: [(&str, &str, u32, u32); 6] = [
        (SMS_FEATURE, "1012345678V123456", 579_953_144, 53_144),
        (SMS_FEATURE, "1008596317V456789", 1_350_703_311, 3_311),
        (SMS_FEATURE, "1012345628V028132", 598_200_679, 679),
        (SMS_FEATURE, "1012345658V265702", 574_901_449, 1_449),
        (PUSH_FEATURE, "1012345678V123456", 2_077_341_078, 41_078),
        (PUSH_FEATURE, "1008596317V456789", 163_761_313, 61_313),
    ];
    for (feature, icn, crc, bucket) in VECTORS {
        assert_eq!(crc32fast::hash(format!("{feature}{icn}").as_bytes()), crc, "{feature}{icn}");
        assert_eq!(actor_bucket(feature, icn), bucket, "{feature}{icn}");
    }
    // 2%: buckets below 2,000; 25%: below 25,000.
    assert!(actor_in_percentage(SMS_FEATURE, "1012345628V028132", 2.0));
    assert!(actor_in_percentage(SMS_FEATURE, "1012345658V265702", 2.0));
    assert!(!actor_in_percentage(SMS_FEATURE, "1012345658V265702", 1.449));
    assert!(actor_in_percentage(SMS_FEATURE, "1012345658V265702", 1.45));
    assert!(!actor_in_percentage(SMS_FEATURE, "1008596317V456789", 2.0));
    assert!(actor_in_percentage(SMS_FEATURE, "1008596317V456789", 25.0));
    assert!(!actor_in_percentage(SMS_FEATURE, "1012345678V123456", 25.0));
    assert!(!actor_in_percentage(PUSH_FEATURE, "1008596317V456789", 50.0));
}
