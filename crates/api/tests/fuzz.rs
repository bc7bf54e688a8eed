//! Issue 9, item 6: the API's JSON decoding under random documents built from the real field
//! names: decoding never panics, and whatever decodes encodes and decodes back to the same.

use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

const FIELDS: &[&str] = &[
    "spec",
    "name",
    "vcpus",
    "memory",
    "machine",
    "accel",
    "kernel",
    "path",
    "initrd",
    "cmdline",
    "disks",
    "nics",
    "graphics",
    "type",
    "port",
    "password",
    "password_set",
    "listen",
    "source",
    "model",
    "mac",
    "vol",
    "format",
    "bus",
    "cache",
    "aio",
    "readonly",
    "size",
    "target",
    "cdrom",
    "boot",
    "ephemeral",
    "autostart",
    "start",
    "state",
    "console",
    "timeout_secs",
    "force",
    "live",
    "config",
    "disk",
    "nic",
    "ip",
    "hostname",
    "vm",
    "proto",
    "host_port",
    "host_addr",
    "mode",
    "subnet",
    "dhcp_range",
    "bridge",
    "reservations",
    "forwards",
    "backing",
    "linked",
    "paused",
    "remove_storage",
    "enabled",
    "description",
    "disk_only",
    "iface",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            "[a-z0-9/._:=, -]{0,16}",
            Just("vnc".to_string()),
            Just("network".to_string()),
            Just("/tmp/x.qcow2".to_string()),
            Just("52:54:00:12:34:56".to_string()),
            Just("10.0.0.0/24".to_string()),
            Just("512M".to_string()),
            any::<String>(),
        ]
        .prop_map(Value::from),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(FIELDS), inner, 0..8).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// Decodes `doc` as `T`; when that works, `T` encodes and decodes back to the same value.
fn round_trips<T: Serialize + DeserializeOwned>(doc: &Value) -> Result<Option<T>, TestCaseError> {
    let bytes = serde_json::to_vec(doc).unwrap();
    let Ok(v) = serde_json::from_slice::<T>(&bytes) else {
        return Ok(None);
    };
    let once = serde_json::to_value(&v).unwrap();
    let again: T = serde_json::from_value(once.clone())
        .map_err(|e| TestCaseError::fail(format!("{once} does not decode again: {e}")))?;
    prop_assert_eq!(serde_json::to_value(&again).unwrap(), once);
    Ok(Some(v))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn request_bodies_decode_without_panic_and_round_trip(doc in document(), raw in any::<Vec<u8>>()) {
        if let Some(req) = round_trips::<api::CreateVmRequest>(&doc)? {
            // A spec that validates still validates after the trip.
            if req.spec.validate().is_ok() {
                let again: model::VmSpec = serde_json::from_value(serde_json::to_value(&req.spec).unwrap()).unwrap();
                prop_assert!(again.validate().is_ok());
                prop_assert_eq!(again, req.spec);
            }
        }
        if let Some(n) = round_trips::<model::NetworkSpec>(&doc)? {
            let _ = n.validate();
        }
        round_trips::<api::WaitRequest>(&doc)?;
        round_trips::<api::ShutdownRequest>(&doc)?;
        round_trips::<api::CreatePoolRequest>(&doc)?;
        round_trips::<api::CreateVolRequest>(&doc)?;
        round_trips::<api::ImportVolRequest>(&doc)?;
        round_trips::<api::CloneVolRequest>(&doc)?;
        round_trips::<api::ResizeVolRequest>(&doc)?;
        round_trips::<api::AttachDiskRequest>(&doc)?;
        round_trips::<api::AttachNicRequest>(&doc)?;
        round_trips::<api::MediaRequest>(&doc)?;
        round_trips::<api::CreateSnapshotRequest>(&doc)?;
        round_trips::<api::AddForwardRequest>(&doc)?;
        round_trips::<api::AddReservationRequest>(&doc)?;
        // And bytes that are not JSON at all.
        let _ = serde_json::from_slice::<api::CreateVmRequest>(&raw);
    }

    /// The shape a real create takes, with hostile leaves.
    #[test]
    fn vm_specs_with_hostile_leaves_round_trip(
        name in scalar(), path in scalar(), cmdline in scalar(), mac in scalar(), port in scalar(), pw in scalar()
    ) {
        let doc = serde_json::json!({ "spec": {
            "name": name,
            "kernel": { "path": path, "cmdline": cmdline },
            "nics": [{ "type": "network", "source": "default", "mac": mac }],
            "graphics": { "type": "vnc", "port": port, "password": pw },
        }});
        if let Some(req) = round_trips::<api::CreateVmRequest>(&doc)? {
            if req.spec.validate().is_ok() {
                let again: model::VmSpec = serde_json::from_value(serde_json::to_value(&req.spec).unwrap()).unwrap();
                prop_assert_eq!(again, req.spec);
            }
        }
    }
}
