//! Property tests (proptest) of the wire formats against arbitrary input: the console
//! marker scanner and parsers, LAVA's test shell signals, and LAVA's legacy frame header
//! and request decoder. Input
//! that arrives from consoles and sockets may be anything; none of it may panic, and
//! whatever we write must read back the same. Bounded: each property runs a fixed
//! number of cases (about a second in all), so `cargo test` stays fast.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use proptest::prelude::*;
use proto::legacy::{self, HEADER_LEN, Request};
use proto::markers::{self, Call, Reply, Scanner};
use proto::signal::{self, Outcome, ShellDone, Signal, TestCase};

/// Text of any Unicode, white space and marker characters included.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,40}", "[<>=: %\\t\\r\\nA-Z_a-z0-9]{0,40}",]
}

fn non_empty_text() -> impl Strategy<Value = String> {
    any_text().prop_filter("not empty", |s| !s.is_empty())
}

fn any_call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (
            non_empty_text(),
            prop::collection::vec((non_empty_text(), any_text()), 0..5)
        )
            .prop_map(|(id, data)| Call::Send { id, data }),
        non_empty_text().prop_map(|id| Call::Wait { id }),
        (non_empty_text(), prop::option::of(non_empty_text()))
            .prop_map(|(id, role)| Call::WaitAll { id, role }),
        non_empty_text().prop_map(|id| Call::Sync { id }),
    ]
}

fn any_reply() -> impl Strategy<Value = Reply> {
    let api = prop::sample::select(vec!["WAIT", "WAIT_ALL", "SYNC"]).prop_map(str::to_string);
    prop_oneof![
        (
            api.clone(),
            prop::collection::vec((non_empty_text(), non_empty_text(), any_text()), 0..5)
        )
            .prop_map(|(api, entries)| Reply::Complete { api, entries }),
        (api, prop::option::of(any_text())).prop_map(|(api, reason)| Reply::Nack { api, reason }),
    ]
}

/// What a signal's parameter may hold (`signal::is_word`), `=`, `:` and `/` included.
fn word() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:/=+-]{1,12}"
}

fn any_signal() -> impl Strategy<Value = Signal> {
    let outcome = prop::sample::select(Outcome::ALL.to_vec());
    prop_oneof![
        (word(), prop::option::of(word()))
            .prop_map(|(run_id, uuid)| Signal::StartRun { run_id, uuid }),
        (word(), prop::option::of(word()))
            .prop_map(|(run_id, uuid)| Signal::EndRun { run_id, uuid }),
        word().prop_map(|id| Signal::StartTc { id }),
        word().prop_map(|id| Signal::EndTc { id }),
        (
            word(),
            outcome.clone(),
            prop::option::of(word()),
            prop::option::of(word())
        )
            .prop_map(
                |(id, result, measurement, units)| Signal::TestCase(TestCase {
                    id,
                    result,
                    measurement,
                    units
                })
            ),
        (word(), outcome, word()).prop_map(|(id, result, reference)| Signal::TestReference {
            id,
            result,
            reference
        }),
        word().prop_map(|name| Signal::TestSetStart { name }),
        Just(Signal::TestSetStop),
        prop::collection::vec(word(), 1..5).prop_map(|words| Signal::TestRaise {
            message: words.join(" ")
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_signal_reads_back_from_a_console_line_among_noise(
        signal in any_signal(),
        before in "[^<\n]{0,20}",
        after in "[^\n]{0,20}",
    ) {
        prop_assert!(signal::is_word(signal.name()));
        let line = format!("{before}{signal}{after}");
        prop_assert_eq!(Signal::find(&line), Some(Ok(signal.clone())));
        prop_assert_eq!(signal.to_string().parse::<Signal>(), Ok(signal));
    }

    #[test]
    fn signals_read_from_any_text_without_panicking(text in any_text()) {
        let _ = Signal::find(&text);
        let _ = text.parse::<Signal>();
        let _ = ShellDone::find(&text);
        let line = format!("<LAVA_SIGNAL_{text}>");
        let _ = Signal::find(&line);
    }

    #[test]
    fn any_raise_message_makes_one_marker_that_reads_back(message in any_text()) {
        let line = Signal::TestRaise { message }.to_string();
        prop_assert!(!line.contains('\n'));
        prop_assert_eq!(line.matches('>').count(), 1);
        // Read back, the message has its white space runs made one space; from then on
        // it reads back as written.
        if let Some(Ok(again)) = Signal::find(&line) {
            prop_assert_eq!(again.name(), "TESTRAISE");
            prop_assert_eq!(Signal::find(&again.to_string()), Some(Ok(again)));
        }
    }

    #[test]
    fn the_scanner_takes_any_bytes_in_any_pieces(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8)
    ) {
        let mut scanner = Scanner::new();
        for chunk in &chunks {
            let _ = scanner.feed(chunk);
        }
    }

    #[test]
    fn a_call_reads_back_from_a_console_among_noise(
        call in any_call(),
        before in "[^<\\n]{0,20}",
        split in 0usize..200,
    ) {
        let line = format!("{before}{}\n", markers::format_call(&call));
        let bytes = line.as_bytes();
        let split = split.min(bytes.len());
        let mut scanner = Scanner::new();
        let mut found = scanner.feed(&bytes[..split]);
        found.extend(scanner.feed(&bytes[split..]));
        prop_assert_eq!(found, vec![Ok(call)]);
    }

    #[test]
    fn a_reply_reads_back(reply in any_reply(), noise in "[^<]{0,20}") {
        let api = match &reply {
            Reply::Complete { api, .. } | Reply::Nack { api, .. } => api.clone(),
        };
        let line = format!("{noise}{}", markers::format_reply(&reply));
        let parsed = markers::parse_reply(&line, &api);
        // A nack with an empty reason reads back as a reason of "".
        let expected = match reply {
            Reply::Nack { api, reason: Some(r) } if r.is_empty() => Reply::Nack { api, reason: Some(r) },
            other => other,
        };
        prop_assert_eq!(parsed, Some(Ok(expected)));
    }

    #[test]
    fn replies_and_calls_parse_from_any_text_without_panicking(text in any_text(), api in "[A-Z_]{0,10}") {
        let _ = markers::parse_reply(&text, &api);
        let _ = markers::parse_call(&text);
        let _ = markers::decode(&text);
    }

    #[test]
    fn percent_encoding_round_trips(text in any_text()) {
        prop_assert_eq!(markers::decode(&markers::encode(&text)), Ok(text));
    }

    #[test]
    fn a_legacy_header_is_hex_within_the_limit_or_refused(header in any::<[u8; HEADER_LEN]>(), limit in 0u64..1 << 32) {
        if let Ok(size) = legacy::parse_header(&header, limit) {
            prop_assert!(size <= limit);
            prop_assert!(header.iter().all(u8::is_ascii_hexdigit));
        }
    }

    #[test]
    fn a_legacy_request_decodes_from_any_bytes_without_panicking(body in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Request::decode(&body);
    }

    #[test]
    fn a_legacy_request_of_any_json_shape_decodes_or_is_refused(value in any_json()) {
        let _ = Request::decode(value.to_string().as_bytes());
    }
}

/// JSON of any shape, with the request's own keys often present (so wrong types for
/// them are tried, not just unknown keys).
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let key = prop::sample::select(vec![
            "request",
            "group_name",
            "client_name",
            "role",
            "group_size",
            "messageID",
            "message",
            "waitrole",
            "bundle",
            "sub_id",
            "poll_delay",
            "other",
        ])
        .prop_map(str::to_string);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
