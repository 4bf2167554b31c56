use std::cell::RefCell;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::Value;
use system_tests::{SshLab, TEST_MAX_JOB_BYTES, diagnostic_pointers, http, json_of};

/// How many malformed jobs one run submits.
const CASES: u32 = 1000;

/// The seed of the generated cases unless `PROPTEST_RNG_SEED` says another: every run
/// submits the same jobs, and a failure names its (shrunk) case.
const SEED: u64 = 0x2545_F491_4F6C_DD1D;

/// Places of the seed job that a wrong type is put into.
const TYPED: [&str; 14] = [
    "/job_name",
    "/timeout",
    "/vm_group",
    "/vm_group/host",
    "/vm_group/host/device_type",
    "/vm_group/host/role",
    "/vm_group/auto_start_vms",
    "/vm_group/vms",
    "/vm_group/vms/0",
    "/vm_group/vms/0/role",
    "/vm_group/vms/0/shell_prompt",
    "/actions",
    "/actions/0/command",
    "/actions/0/parameters",
];

/// Required fields of the seed job (parent, key) that one is removed from. (A missing
/// job `timeout` is a warning: the job gets the default.)
const REQUIRED: [(&str, &str); 6] = [
    ("", "actions"),
    ("/vm_group", "host"),
    ("/vm_group", "vms"),
    ("/vm_group/host", "device_type"),
    ("/vm_group/vms/0", "device_type"),
    ("/actions/0", "command"),
];

/// A malformed job, as generated.
#[derive(Debug, Clone)]
enum Malformed {
    /// Bytes that are not a job.
    Bytes(Vec<u8>),
    /// The seed job cut off after this many bytes.
    CutOff(usize),
    /// Empty arrays nested this deep.
    Nested(usize),
    /// A value of another JSON type at `TYPED[.0]` (`.1` picks which).
    WrongType(usize, usize),
    /// `REQUIRED[.0]` removed.
    Missing(usize),
    /// An unknown field `bogus_N` in `vm_group`.
    Unknown(u32),
    /// The seed job with `TEST_MAX_JOB_BYTES` and this many more spaces after it.
    TooLarge(usize),
    /// The seed job with the byte at this offset made 0xff (never UTF-8).
    NotUtf8(usize),
}

/// What the answer to a malformed job must be.
struct Wanted {
    status: u16,
    /// A pointer among the answer's diagnostics.
    pointer: Option<String>,
    /// A text in the answer.
    text: Option<String>,
}

impl Malformed {
    const KINDS: usize = 8;

    fn kind(&self) -> usize {
        match self {
            Self::Bytes(_) => 0,
            Self::CutOff(_) => 1,
            Self::Nested(_) => 2,
            Self::WrongType(..) => 3,
            Self::Missing(_) => 4,
            Self::Unknown(_) => 5,
            Self::TooLarge(_) => 6,
            Self::NotUtf8(_) => 7,
        }
    }

    /// Every kind alike, for a seed job of `seed_len` bytes.
    fn strategy(seed_len: usize) -> impl Strategy<Value = Self> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 1..=200).prop_map(Self::Bytes),
            (1..seed_len - 1).prop_map(Self::CutOff),
            (200..5200usize).prop_map(Self::Nested),
            (0..TYPED.len(), 0..6usize).prop_map(|(at, pick)| Self::WrongType(at, pick)),
            (0..REQUIRED.len()).prop_map(Self::Missing),
            any::<u32>().prop_map(Self::Unknown),
            (0..100_000usize).prop_map(Self::TooLarge),
            (0..seed_len).prop_map(Self::NotUtf8),
        ]
    }

    /// The body to submit and what its answer must be.
    fn request(&self, seed: &Value, seed_text: &str) -> (Vec<u8>, Wanted) {
        let refused = |status, pointer: Option<String>, text: Option<&str>| Wanted {
            status,
            pointer,
            text: text.map(str::to_string),
        };
        match self {
            Self::Bytes(bytes) => (bytes.clone(), refused(400, None, None)),
            Self::CutOff(cut) => (
                seed_text.as_bytes()[..*cut].to_vec(),
                refused(400, None, Some("line")),
            ),
            Self::Nested(depth) => {
                let text = format!("{}{}", "[".repeat(*depth), "]".repeat(*depth));
                (text.into_bytes(), refused(400, None, None))
            }
            Self::WrongType(at, pick) => {
                let pointer = TYPED[*at];
                let mut job = seed.clone();
                let original = job.pointer(pointer).unwrap().clone();
                *job.pointer_mut(pointer).unwrap() = wrong_type(&original, *pick);
                let wanted = refused(400, Some(pointer.to_string()), None);
                (job.to_string().into_bytes(), wanted)
            }
            Self::Missing(which) => {
                let (parent, key) = REQUIRED[*which];
                let mut job = seed.clone();
                job.pointer_mut(parent)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove(key);
                (job.to_string().into_bytes(), refused(400, None, Some(key)))
            }
            Self::Unknown(n) => {
                let mut job = seed.clone();
                let key = format!("bogus_{n}");
                job["vm_group"][&key] = Value::from(1);
                let wanted = refused(400, Some(format!("/vm_group/{key}")), None);
                (job.to_string().into_bytes(), wanted)
            }
            Self::TooLarge(more) => {
                let mut job = seed_text.as_bytes().to_vec();
                job.extend(std::iter::repeat_n(b' ', TEST_MAX_JOB_BYTES + more));
                (job, refused(413, None, None))
            }
            Self::NotUtf8(at) => {
                let mut job = seed_text.as_bytes().to_vec();
                job[*at] = 0xff;
                (job, refused(400, None, Some("UTF-8")))
            }
        }
    }
}

/// A value of another JSON type than `original`.
fn wrong_type(original: &Value, pick: usize) -> Value {
    let candidates = [
        Value::from(42),
        Value::from("text"),
        Value::Array(vec![]),
        serde_json::json!({}),
        Value::Null,
        Value::Bool(true),
    ];
    let same = |v: &Value| {
        std::mem::discriminant(v) == std::mem::discriminant(original)
            || (v.is_number() && original.is_number())
    };
    let others: Vec<&Value> = candidates.iter().filter(|v| !same(v)).collect();
    others[pick % others.len()].clone()
}

/// 1,000 bad jobs generated by proptest: bytes that are not JSON, cut-off JSON,
/// nesting thousands deep, wrong types, missing and unknown fields, invalid UTF-8,
/// bodies past the size limit. Each gets a 4xx whose body names the problem (and, for
/// a job that parses, where); the daemon stays up and stores none of them.
#[test]
fn a_thousand_malformed_jobs_get_clear_4xx_answers() {
    let lab = SshLab::new();
    let (daemon, api) = lab.serve();
    let (addr, token) = (daemon.addr(), api.token().to_string());
    let seed_text = lab.seed_job();
    let seed: Value = serde_json::from_str(&seed_text).unwrap();
    let mut config = Config {
        cases: CASES,
        failure_persistence: None,
        // Each shrinking step is a request: a failure is reported within minutes.
        max_shrink_iters: 500,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    let by_kind = RefCell::new([0usize; Malformed::KINDS]);
    let result = TestRunner::new(config).run(&Malformed::strategy(seed_text.len()), |case| {
        by_kind.borrow_mut()[case.kind()] += 1;
        let (body, wanted) = case.request(&seed, &seed_text);
        let (status, answer) = http(&addr, "POST", "/api/v1/jobs", Some(&token), &body)
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(status, wanted.status, "{}", answer);
        if status == 400 {
            let error = json_of(&answer)["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            prop_assert!(!error.is_empty(), "no error text in {}", answer);
            if let Some(pointer) = &wanted.pointer {
                let found = diagnostic_pointers(&answer);
                prop_assert!(found.contains(pointer), "{} not among {:?}", pointer, found);
            }
            if let Some(text) = &wanted.text {
                prop_assert!(answer.contains(text), "{:?} not in {}", text, answer);
            }
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let by_kind = by_kind.into_inner();
    assert_eq!(by_kind.iter().sum::<usize>(), CASES as usize, "{by_kind:?}");
    assert!(
        by_kind.iter().all(|&n| n > 0),
        "every kind tried: {by_kind:?}"
    );
    let (status, _) = http(&addr, "GET", "/healthz", None, b"").unwrap();
    assert_eq!(status, 200, "the daemon is still up");
    let (status, body) = api.request("GET", "/api/v1/jobs", b"").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body)["jobs"].as_array().map(Vec::len),
        Some(0),
        "no bad job was stored: {body}"
    );
}
