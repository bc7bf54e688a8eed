//! Issue 9, item 6: the spec parsers (CLI SPEC strings, TOML spec files) under random and
//! hostile input: they never panic, and whatever they accept validates and round-trips.

use model::{parse_size, BootOrder, DiskSpec, GraphicsSpec, Mac, NicSpec, Size, VmName, VmSpec};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    // Modest, so `cargo test` stays fast; the strategies aim at the interesting shapes.
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Values that hit the parsers' edges: separators, control characters, paths, numbers.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9/._:=,-]{0,16}",
        Just(String::new()),
        Just("/a/../b".to_string()),
        Just("/tmp/x\n".to_string()),
        Just("/tmp/a\u{0}b".to_string()),
        Just("p1/v.qcow2".to_string()),
        Just("../x".to_string()),
        Just("18446744073709551615T".to_string()),
        Just("52:54:00:12:34:56".to_string()),
        Just("01:00:5e:00:00:01".to_string()),
        any::<String>(),
    ]
}

fn key_values(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(keys), value()), 0..6).prop_map(|kvs| {
        kvs.into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn json_round_trip<T>(v: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

fn vm_with(edit: impl FnOnce(&mut VmSpec)) -> VmSpec {
    let mut s = VmSpec::new("fuzz".parse().unwrap());
    edit(&mut s);
    s
}

const BASE_TOML: &str = "name = \"web\"\nvcpus = 2\nmemory = \"512M\"\nmachine = \"pc\"\n\n[kernel]\npath = \"/boot/vmlinuz\"\ncmdline = \"console=ttyS0\"\n\n[[disks]]\npath = \"/var/lib/hv/web.qcow2\"\nformat = \"qcow2\"\n";

#[test]
fn the_fuzzed_toml_starts_from_a_valid_spec() {
    let spec: VmSpec = toml::from_str(BASE_TOML).unwrap();
    spec.validate().unwrap();
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn disk_specs_that_parse_validate_and_round_trip(
        s in prop_oneof![
            key_values(&["path", "file", "vol", "format", "bus", "cache", "aio", "readonly", "size", "target", "x"]),
            any::<String>(),
        ]
    ) {
        if let Ok(d) = s.parse::<DiskSpec>() {
            prop_assert_eq!(&json_round_trip(&d), &d);
            let spec = vm_with(|v| v.disks = vec![d.clone()]);
            prop_assert!(spec.validate().is_ok(), "{s:?} parsed but does not validate: {:?}", spec.validate());
        }
    }

    #[test]
    fn nic_specs_that_parse_validate_and_round_trip(
        s in prop_oneof![
            (prop::sample::select(&["user", "network", "bridge", "tap", ""][..]), key_values(&["network", "bridge", "model", "mac", "x"]))
                .prop_map(|(k, rest)| if rest.is_empty() { k.to_string() } else { format!("{k},{rest}") }),
            key_values(&["network", "bridge", "model", "mac", "user"]),
            any::<String>(),
        ]
    ) {
        if let Ok(n) = s.parse::<NicSpec>() {
            prop_assert_eq!(&json_round_trip(&n), &n);
            let spec = vm_with(|v| v.nics = vec![n.clone()]);
            prop_assert!(spec.validate().is_ok(), "{s:?} parsed but does not validate: {:?}", spec.validate());
        }
    }

    #[test]
    fn graphics_boot_and_sizes_that_parse_round_trip(
        g in prop_oneof![
            key_values(&["listen", "port", "password", "passwd", "x"]).prop_map(|r| format!("vnc,{r}")),
            any::<String>(),
        ],
        b in "[cdnx,a-z]{0,12}",
        sz in prop_oneof!["[0-9]{0,22}[KMGTkmgtBb]?", any::<String>()],
        mac in prop_oneof!["([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", any::<String>()],
        name in any::<String>(),
    ) {
        if let Ok(parsed) = g.parse::<GraphicsSpec>() {
            prop_assert_eq!(&json_round_trip(&parsed), &parsed);
            let spec = vm_with(|v| v.graphics = parsed.clone());
            prop_assert!(spec.validate().is_ok(), "{g:?} parsed but does not validate");
        }
        if let Ok(order) = b.parse::<BootOrder>() {
            prop_assert_eq!(&json_round_trip(&order), &order);
        }
        if let Ok(n) = parse_size(&sz) {
            prop_assert_eq!(json_round_trip(&Size(n)), Size(n));
        }
        if let Ok(m) = mac.parse::<Mac>() {
            prop_assert_eq!(m.to_string().parse::<Mac>().unwrap(), m);
        }
        if let Ok(n) = name.parse::<VmName>() {
            prop_assert_eq!(n.as_str().parse::<VmName>().unwrap(), n.clone());
            prop_assert!(!n.as_str().contains(['/', ',', '\n', '\0']));
        }
    }

    /// Spec files: a valid file with random lines changed, dropped or added.
    #[test]
    fn toml_specs_that_parse_and_validate_round_trip(
        edits in prop::collection::vec(
            (0usize..12, prop::sample::select(&["name", "vcpus", "memory", "machine", "accel", "cdrom", "boot", "ephemeral", "autostart", "colour"][..]), value(), 0u8..3),
            0..5,
        )
    ) {
        let mut lines: Vec<String> = BASE_TOML.lines().map(str::to_string).collect();
        for (at, key, v, how) in edits {
            let at = at % (lines.len() + 1);
            let line = format!("{key} = {}", toml::Value::String(v));
            match how {
                0 => lines.insert(at, line),
                1 if at < lines.len() => { lines.remove(at); }
                _ if at < lines.len() => lines[at] = line,
                _ => {}
            }
        }
        let text = lines.join("\n");
        if let Ok(spec) = toml::from_str::<VmSpec>(&text) {
            if spec.validate().is_ok() {
                let again: VmSpec = toml::from_str(&toml::to_string(&spec).unwrap()).unwrap();
                prop_assert_eq!(&again, &spec);
                prop_assert!(again.validate().is_ok());
                prop_assert_eq!(&json_round_trip(&spec), &spec);
            }
        }
    }
}
