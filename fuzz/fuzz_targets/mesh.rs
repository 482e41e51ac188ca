//! The user's VirtualServices and DestinationRules, as arbitrary JSON: `mesh::resolve`,
//! then the JSON Patches weir writes, applied to the very JSON they were built from.
//!
//! Input: 2 bytes (the canary weight to set; which annotations name the objects, route,
//! subsets and label), then JSON: an array of objects, each a DestinationRule if its
//! `kind` says so and a VirtualService otherwise (or one such object).
//!
//! Invariants: a patch built from an object applies to it; the weight patch leaves the
//! managed route's weights summing to 100 and changes nothing but those weights (and
//! the canary destination it adds); the subset patch changes nothing but the one label;
//! resolving the patched objects reads back what was written.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weir::mesh::{self, DestinationRule, Target, VirtualService};
use weir::plan::{Subset, Traffic};
use weir::spec::{self, Defaults, RolloutSpec, keys};

const NAMESPACE: &str = "store";

/// The name the agent reads, as `ResourceExt::name_any` does.
macro_rules! name_of {
    ($object:expr) => {
        $object
            .metadata
            .name
            .clone()
            .or_else(|| $object.metadata.generate_name.clone())
            .unwrap_or_default()
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&[weight, choices], json)) = data.split_first_chunk::<2>() else {
        return;
    };
    // The typed reads the controller's list calls make must refuse, not crash.
    let _ = serde_json::from_slice::<VirtualService>(json);
    let _ = serde_json::from_slice::<DestinationRule>(json);
    let Ok(value) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let objects = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    let mut vss: Vec<(Value, VirtualService)> = Vec::new();
    let mut drs: Vec<(Value, DestinationRule)> = Vec::new();
    for object in objects {
        if object["kind"] == "DestinationRule" {
            if let Ok(typed) = serde_json::from_value(object.clone()) {
                drs.push((object, typed));
            }
        } else if let Ok(typed) = serde_json::from_value(object.clone()) {
            vss.push((object, typed));
        }
    }
    // Names are unique per kind in a namespace; the apiserver sees to it.
    if !unique(vss.iter().map(|(_, vs)| name_of!(vs)))
        || !unique(drs.iter().map(|(_, dr)| name_of!(dr)))
    {
        return;
    }
    for (_, vs) in &vss {
        let _ = mesh::routes_to(vs, "shop", NAMESPACE);
    }

    let spec = spec(choices);
    let typed_vss: Vec<VirtualService> = vss.iter().map(|(_, vs)| vs.clone()).collect();
    let typed_drs: Vec<DestinationRule> = drs.iter().map(|(_, dr)| dr.clone()).collect();
    let target = match mesh::resolve(&spec, NAMESPACE, &typed_vss, &typed_drs) {
        Ok(target) => target,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    let live = target.traffic;
    assert_eq!(
        u16::from(live.stable) + u16::from(live.canary),
        100,
        "{live:?}"
    );

    let vs_index = vss
        .iter()
        .position(|(_, vs)| name_of!(vs) == target.virtual_service.name)
        .expect("the resolved VirtualService is one of those given");
    let dr_index = drs
        .iter()
        .position(|(_, dr)| name_of!(dr) == target.destination_rule.name)
        .expect("the resolved DestinationRule is one of those given");

    let canary = weight % 101;
    let traffic = Traffic {
        stable: 100 - canary,
        canary,
    };
    let patch = mesh::weight_patch(&target, traffic).expect("valid weights");
    let before = &vss[vs_index].0;
    let mut after = before.clone();
    json_patch::patch(&mut after, &patch)
        .unwrap_or_else(|e| panic!("the weight patch does not apply to its own read: {e}"));
    check_weights(before, &after, &target, traffic);
    let mut typed_vss = typed_vss;
    typed_vss[vs_index] = serde_json::from_value(after).expect("the patched object reads");
    let again = mesh::resolve(&spec, NAMESPACE, &typed_vss, &typed_drs)
        .expect("the patched VirtualService resolves");
    assert_eq!(again.traffic, traffic);

    for subset in [Subset::Stable, Subset::Canary] {
        let version = "v9";
        let patch = mesh::subset_version_patch(&target, subset, &spec.version_label, version);
        let before = &drs[dr_index].0;
        let mut after = before.clone();
        json_patch::patch(&mut after, &patch)
            .unwrap_or_else(|e| panic!("the subset patch does not apply to its own read: {e}"));
        let index = target.subset(subset).index;
        let labels = format!("/spec/subsets/{index}/labels");
        assert_eq!(
            after
                .pointer(&labels)
                .and_then(|l| l.get(&spec.version_label)),
            Some(&Value::from(version))
        );
        assert_eq!(
            without_label(before.clone(), index, &spec.version_label),
            without_label(after.clone(), index, &spec.version_label),
            "the subset patch changed more than the label"
        );
        let mut typed_drs = typed_drs.clone();
        typed_drs[dr_index] = serde_json::from_value(after).expect("the patched object reads");
        let again = mesh::resolve(&spec, NAMESPACE, &typed_vss, &typed_drs)
            .expect("the patched DestinationRule resolves");
        let read = match subset {
            Subset::Stable => &again.subsets.stable,
            Subset::Canary => &again.subsets.canary,
        };
        assert_eq!(read.as_deref(), Some(version));
    }
});

fn unique(names: impl Iterator<Item = String>) -> bool {
    let mut seen = BTreeSet::new();
    names.into_iter().all(|name| seen.insert(name))
}

fn spec(choices: u8) -> RolloutSpec {
    let bit = |n: u8| choices & (1 << n) != 0;
    let mut annotations = BTreeMap::from([(keys::ENABLED, "true")]);
    if bit(0) {
        annotations.insert(keys::ROUTE, "main");
    }
    if bit(1) {
        annotations.insert(keys::VIRTUAL_SERVICE, "shop");
    }
    if bit(2) {
        annotations.insert(keys::DESTINATION_RULE, "shop");
    }
    if bit(3) {
        annotations.insert(keys::VERSION_LABEL, "app.kubernetes.io/version");
    }
    if bit(4) {
        annotations.insert(keys::STABLE_SUBSET, "blue");
        annotations.insert(keys::CANARY_SUBSET, "green");
    }
    let annotations = annotations
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    spec::parse("shop", &annotations, &Defaults::default()).expect("valid annotations")
}

/// The weight patch set the managed route's weights, each destination's and nothing
/// else, adding at most the canary destination.
fn check_weights(before: &Value, after: &Value, target: &Target, traffic: Traffic) {
    let route = format!("/spec/http/{}/route", target.route.index);
    let old = before.pointer(&route).and_then(Value::as_array).unwrap();
    let new = after.pointer(&route).and_then(Value::as_array).unwrap();
    let weights: Vec<i64> = new
        .iter()
        .map(|d| {
            d["weight"]
                .as_i64()
                .expect("every destination has a weight")
        })
        .collect();
    assert_eq!(weights.iter().sum::<i64>(), 100, "{weights:?}");
    let stable = target.stable_destination.index;
    assert_eq!(weights[stable], i64::from(traffic.stable));
    let canary = target
        .canary_destination
        .as_ref()
        .map_or(old.len(), |d| d.index);
    assert_eq!(weights[canary], i64::from(traffic.canary));
    assert!(
        new.len() == old.len()
            || (target.canary_destination.is_none() && new.len() == old.len() + 1)
    );
    for (old, new) in old.iter().zip(new) {
        assert_eq!(
            without_weight(old),
            without_weight(new),
            "a destination changed"
        );
    }
    let mut before = before.clone();
    let mut after = after.clone();
    *before.pointer_mut(&route).unwrap() = Value::Null;
    *after.pointer_mut(&route).unwrap() = Value::Null;
    assert_eq!(
        before, after,
        "the weight patch changed more than the route's weights"
    );
}

fn without_weight(destination: &Value) -> Value {
    let mut destination = destination.clone();
    if let Some(object) = destination.as_object_mut() {
        object.remove("weight");
    }
    destination
}

/// `dr` without `label` in subset `index`, and with an empty `labels` map as none: the
/// subset patch creates the map when the subset had none.
fn without_label(mut dr: Value, index: usize, label: &str) -> Value {
    let subset = &mut dr["spec"]["subsets"][index];
    if let Some(labels) = subset.get_mut("labels").and_then(Value::as_object_mut) {
        labels.remove(label);
        if labels.is_empty() {
            subset.as_object_mut().unwrap().remove("labels");
        }
    } else if let Some(object) = subset.as_object_mut() {
        object.remove("labels");
    }
    dr
}
