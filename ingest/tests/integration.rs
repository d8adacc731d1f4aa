//! The crate's one integration-test binary.
//!
//! - `corpus`: replays the checked-in fuzz corpus through the fuzzing checks, so the
//!   invariants the fuzz targets enforce also run on stable in CI.
//! - `mutations`: a small deterministic mutation fuzzer over that corpus, for stable
//!   toolchains (`WATTDB_MUTATIONS=N` raises the rounds per file; default 50).

mod corpus {
    use std::path::{Path, PathBuf};

    use wattdb_ingest::PayloadFormat;

    /// The files of `fuzz/corpus/{target}`, sorted.
    fn corpus_files(target: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        files
    }

    fn replay(target: &str, check: fn(&[u8])) {
        let files = corpus_files(target);
        assert!(
            files.len() >= 10,
            "only {} corpus files for {target}",
            files.len()
        );
        for path in &files {
            let data = match std::fs::read(path) {
                Ok(data) => data,
                Err(e) => panic!("cannot read {}: {e}", path.display()),
            };
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "invariant broken on {}", path.display());
        }
    }

    #[test]
    fn line_protocol_corpus() {
        replay("line_protocol", wattdb_ingest::fuzzing::line_protocol);
    }

    #[test]
    fn json_readings_corpus() {
        replay("json_readings", wattdb_ingest::fuzzing::json_readings);
    }

    #[test]
    fn mqtt_payload_corpus() {
        replay("mqtt_payload", wattdb_ingest::fuzzing::mqtt_payload);
    }

    /// The single-format targets and their formats.
    const MQTT_FORMATS: [(&str, PayloadFormat); 4] = [
        ("mqtt_smartplug", PayloadFormat::SmartPlugJson),
        ("mqtt_tasmota_sensor", PayloadFormat::TasmotaSensor),
        ("mqtt_tasmota_state", PayloadFormat::TasmotaState),
        ("mqtt_shelly", PayloadFormat::ShellySwitch),
    ];

    #[test]
    fn mqtt_single_format_corpora() {
        use wattdb_ingest::fuzzing::mqtt_format;
        replay("mqtt_smartplug", |d| {
            mqtt_format(PayloadFormat::SmartPlugJson, d)
        });
        replay("mqtt_tasmota_sensor", |d| {
            mqtt_format(PayloadFormat::TasmotaSensor, d)
        });
        replay("mqtt_tasmota_state", |d| {
            mqtt_format(PayloadFormat::TasmotaState, d)
        });
        replay("mqtt_shelly", |d| {
            mqtt_format(PayloadFormat::ShellySwitch, d)
        });
    }

    fn decode_format(format: PayloadFormat, data: &[u8]) -> Result<usize, String> {
        let topic = wattdb_ingest::fuzzing::mqtt_format_topic(format);
        let mut batch = wattdb_ingest::ReadingBatch::new();
        wattdb_ingest::fuzzing::mqtt_decoder()
            .decode_message(topic, data, wattdb_ingest::fuzzing::NOW_NS, &mut batch)
            .map_err(|e| e.to_string())
    }

    fn decode_lp(data: &[u8]) -> Result<usize, String> {
        let mut batch = wattdb_ingest::ReadingBatch::new();
        wattdb_ingest::decode_line_protocol(
            data,
            wattdb_ingest::Precision::Ns,
            wattdb_ingest::fuzzing::NOW_NS,
            &mut batch,
        )
        .map_err(|e| e.to_string())
    }

    fn decode_json(data: &[u8]) -> Result<usize, String> {
        let mut batch = wattdb_ingest::ReadingBatch::new();
        wattdb_ingest::decode_json_readings(data, wattdb_ingest::fuzzing::NOW_NS, &mut batch)
            .map_err(|e| e.to_string())
    }

    fn decode_mqtt(data: &[u8]) -> Result<usize, String> {
        let (topic, payload) = wattdb_ingest::fuzzing::split_mqtt_input(data);
        let topic = std::str::from_utf8(topic).map_err(|e| e.to_string())?;
        let mut batch = wattdb_ingest::ReadingBatch::new();
        wattdb_ingest::fuzzing::mqtt_decoder()
            .decode_message(topic, payload, wattdb_ingest::fuzzing::NOW_NS, &mut batch)
            .map_err(|e| e.to_string())
    }

    /// A decoder reduced to its outcome.
    type Decode = dyn Fn(&[u8]) -> Result<usize, String>;

    /// The corpus is meant to reach both outcomes: files named `valid_*` decode, files
    /// named `err_*` are refused.
    #[test]
    fn corpus_names_match_outcomes() {
        let mut decoders: Vec<(&str, Box<Decode>)> = vec![
            ("line_protocol", Box::new(decode_lp)),
            ("json_readings", Box::new(decode_json)),
            ("mqtt_payload", Box::new(decode_mqtt)),
        ];
        for (target, format) in MQTT_FORMATS {
            decoders.push((target, Box::new(move |data| decode_format(format, data))));
        }
        for (target, decode) in decoders {
            for path in corpus_files(target) {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let data = match std::fs::read(&path) {
                    Ok(data) => data,
                    Err(e) => panic!("cannot read {}: {e}", path.display()),
                };
                let result = decode(&data);
                if name.starts_with("valid_") {
                    assert!(result.is_ok(), "{name}: {result:?}");
                } else if name.starts_with("err_") {
                    assert!(result.is_err(), "{name}: {result:?}");
                }
            }
        }
    }
}

mod mutations {
    use std::path::Path;

    /// Tokens that reach the decoders' interesting branches.
    const TOKENS: &[&[u8]] = &[
        b"\\",
        b"\"",
        b"\n",
        b"\r\n",
        b",",
        b"=",
        b" ",
        b"#",
        b"i",
        b"u",
        b"-",
        b"e999",
        b"NaN",
        b"1e400",
        b"9223372036854775807",
        b"true",
        b"null",
        b"[",
        b"]",
        b"{",
        b"}",
        b":",
        b"\\u00",
        b"\xff",
        b"\xc3",
        b"power_metrics",
        b"device_id",
        b"relay_state",
        b"\"ts\":",
        b"voltage=",
        b"0",
        b"-0",
        b".",
        b"\t",
        b"/",
        b"ENERGY",
        b"POWER",
        b"apower",
        b"aenergy",
        b"\"on\"",
    ];

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
        for _ in 0..=rng.below(4) {
            let at = rng.below(data.len() + 1);
            match rng.below(5) {
                0 if !data.is_empty() => {
                    let i = rng.below(data.len());
                    data[i] ^= 1 << rng.below(8);
                }
                1 if !data.is_empty() => {
                    let end = (at + rng.below(8)).min(data.len());
                    data.drain(at.min(end)..end);
                }
                2 => {
                    let token = TOKENS[rng.below(TOKENS.len())];
                    data.splice(at..at, token.iter().copied());
                }
                3 if !data.is_empty() => {
                    let from = rng.below(data.len());
                    let end = (from + rng.below(32)).min(data.len());
                    let chunk = data[from..end].to_vec();
                    data.splice(at..at, chunk);
                }
                _ => data.insert(at, rng.next() as u8),
            }
        }
    }

    fn run(target: &str, check: fn(&[u8])) {
        let rounds: usize = std::env::var("WATTDB_MUTATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| std::fs::read(entry.path()).ok())
            .collect();
        seeds.sort();
        assert!(seeds.len() >= 10, "corpus for {target} not found");
        let mut rng = Rng(0x5eed_0000_0000_0001);
        for seed in &seeds {
            let mut data = seed.clone();
            for _ in 0..rounds {
                if rng.below(4) == 0 {
                    data.clone_from(seed);
                }
                mutate(&mut rng, &mut data);
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(
                    outcome.is_ok(),
                    "invariant broken on {:?}",
                    String::from_utf8_lossy(&data)
                );
            }
        }
    }

    #[test]
    fn line_protocol_mutations() {
        run("line_protocol", wattdb_ingest::fuzzing::line_protocol);
    }

    #[test]
    fn json_readings_mutations() {
        run("json_readings", wattdb_ingest::fuzzing::json_readings);
    }

    #[test]
    fn mqtt_payload_mutations() {
        run("mqtt_payload", wattdb_ingest::fuzzing::mqtt_payload);
    }

    #[test]
    fn mqtt_single_format_mutations() {
        use wattdb_ingest::PayloadFormat;
        use wattdb_ingest::fuzzing::mqtt_format;
        run("mqtt_smartplug", |d| {
            mqtt_format(PayloadFormat::SmartPlugJson, d)
        });
        run("mqtt_tasmota_sensor", |d| {
            mqtt_format(PayloadFormat::TasmotaSensor, d)
        });
        run("mqtt_tasmota_state", |d| {
            mqtt_format(PayloadFormat::TasmotaState, d)
        });
        run("mqtt_shelly", |d| {
            mqtt_format(PayloadFormat::ShellySwitch, d)
        });
    }
}
