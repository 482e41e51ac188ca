//! The only place that builds the JSON Patches weir writes.
//!
//! Each patch first `test`s what it assumes about the object as it was read (the route's
//! name, each touched destination's host, subset and weight, the subset's name and the
//! label's current value), then changes the managed values and nothing else. It does not
//! test `resourceVersion`, so edits elsewhere in the object since the read neither
//! conflict nor get lost. The one exception is a patch that creates something that was
//! absent (the canary destination, a subset's `labels` map): JSON Patch cannot test for
//! absence, so there the resourceVersion guards against a concurrent edit of the same
//! place.

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, TestOperation};
use serde_json::{Map, Value, json};

use std::collections::BTreeMap;

use super::{ManagedDestination, MeshError, RouteKind, Selectors, Target};
use crate::plan::{Subset, Traffic};
use crate::spec::Weight;

/// Sets the managed route's stable and canary weights, adding the canary destination
/// (with the stable destination's host and port) when the route has none.
///
/// Refuses weights that are not 0..=100 summing to 100 (invariant 1).
pub fn weight_patch(target: &Target, traffic: Traffic) -> Result<Patch, MeshError> {
    let valid =
        traffic.stable <= 100 && u16::from(traffic.stable) + u16::from(traffic.canary) == 100;
    debug_assert!(
        valid,
        "weights must be 0..=100 and sum to 100, got {traffic:?}"
    );
    if !valid {
        return Err(MeshError::InvalidTraffic(traffic));
    }

    // Where the route's destinations are, and what names each: a VirtualService's
    // `spec.http[i].route[j].destination.host`, an HTTPRoute's
    // `spec.rules[i].backendRefs[j].name`.
    let (routes, destinations, name_of) = match target.route_kind {
        RouteKind::VirtualService => ("http", "route", pointer(["destination", "host"])),
        RouteKind::HttpRoute => ("rules", "backendRefs", pointer(["name"])),
    };
    let route = pointer(["spec", routes]).with_trailing_token(target.route.index);
    let destination = |d: &ManagedDestination| {
        route
            .concat(&pointer([destinations]))
            .with_trailing_token(d.index)
    };
    let mut ops = Ops::default();
    if let Some(name) = &target.route.name {
        ops.test(route.with_trailing_token("name"), json!(name));
    }
    let managed = std::iter::once(&target.stable_destination).chain(&target.canary_destination);
    for d in managed {
        let at = destination(d);
        ops.test(at.concat(&name_of), json!(d.host));
        if let Some(subset) = &d.subset {
            ops.test(
                at.concat(&pointer(["destination", "subset"])),
                json!(subset),
            );
        }
        if let Some(weight) = d.weight {
            ops.test(at.with_trailing_token("weight"), json!(weight));
        }
    }
    if target.canary_destination.is_none() {
        ops.test_resource_version(target.route_object.resource_version.as_deref());
    }

    let stable = &target.stable_destination;
    set_weight(&mut ops, destination(stable), stable, traffic.stable);
    match &target.canary_destination {
        Some(canary) => set_weight(&mut ops, destination(canary), canary, traffic.canary),
        None => {
            let (host, subset) = target.new_canary_destination();
            let added = match target.route_kind {
                RouteKind::VirtualService => {
                    let mut added = json!({ "host": host });
                    if let Some(subset) = subset {
                        added["subset"] = json!(subset);
                    }
                    if let Some(port) = stable.port {
                        added["port"] = json!({ "number": port });
                    }
                    json!({ "destination": added, "weight": traffic.canary })
                }
                RouteKind::HttpRoute => {
                    let mut added = json!({ "name": host, "weight": traffic.canary });
                    if let Some(port) = stable.port {
                        added["port"] = json!(port);
                    }
                    added
                }
            };
            ops.add(route.concat(&pointer([destinations, "-"])), added);
        }
    }
    Ok(ops.into_patch())
}

/// The object a [`selector_patch`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorObject<'t> {
    DestinationRule(&'t str),
    Service(&'t str),
}

/// Points the stable or canary subset (or, in a host-level split, Service) at a
/// version: sets `label` to `version` in its labels (selector), creating a subset's
/// `labels` map when it has none.
pub fn selector_patch<'t>(
    target: &'t Target,
    subset: Subset,
    label: &str,
    version: &str,
) -> (SelectorObject<'t>, Patch) {
    let mut ops = Ops::default();
    match &target.selectors {
        Selectors::Subsets {
            destination_rule,
            stable,
            canary,
        } => {
            let managed = match subset {
                Subset::Stable => stable,
                Subset::Canary => canary,
            };
            let at = pointer(["spec", "subsets"]).with_trailing_token(managed.index);
            ops.test(at.with_trailing_token("name"), json!(managed.name));
            match &managed.labels {
                Some(labels) => set_label(
                    &mut ops,
                    at.with_trailing_token("labels"),
                    labels,
                    label,
                    version,
                ),
                None => {
                    ops.test_resource_version(destination_rule.resource_version.as_deref());
                    let labels = Map::from_iter([(label.to_owned(), json!(version))]);
                    ops.add(at.with_trailing_token("labels"), Value::Object(labels));
                }
            }
            (
                SelectorObject::DestinationRule(&destination_rule.name),
                ops.into_patch(),
            )
        }
        Selectors::Services { stable, canary } => {
            let managed = match subset {
                Subset::Stable => stable,
                Subset::Canary => canary,
            };
            let at = pointer(["spec", "selector"]);
            set_label(&mut ops, at, &managed.selector, label, version);
            (
                SelectorObject::Service(&managed.object.name),
                ops.into_patch(),
            )
        }
    }
}

/// Sets `label` to `version` in the map at `at`, testing its current value.
fn set_label(
    ops: &mut Ops,
    at: PointerBuf,
    labels: &BTreeMap<String, String>,
    label: &str,
    version: &str,
) {
    let path = at.with_trailing_token(label);
    match labels.get(label) {
        Some(current) => {
            ops.test(path.clone(), json!(current));
            ops.replace(path, json!(version));
        }
        None => ops.add(path, json!(version)),
    }
}

fn set_weight(
    ops: &mut Ops,
    destination: PointerBuf,
    managed: &ManagedDestination,
    weight: Weight,
) {
    let path = destination.with_trailing_token("weight");
    match managed.weight {
        Some(_) => ops.replace(path, json!(weight)),
        None => ops.add(path, json!(weight)),
    }
}

/// A pointer from unescaped tokens (`/` and `~` in them are escaped).
fn pointer<'t>(tokens: impl IntoIterator<Item: Into<Token<'t>>>) -> PointerBuf {
    PointerBuf::from_tokens(tokens)
}

/// Guards first, then changes, in the order they were added.
#[derive(Default)]
struct Ops {
    guards: Vec<PatchOperation>,
    changes: Vec<PatchOperation>,
}

impl Ops {
    fn test(&mut self, path: PointerBuf, value: Value) {
        self.guards
            .push(PatchOperation::Test(TestOperation { path, value }));
    }

    /// Objects read from the apiserver always have a resourceVersion; objects built in
    /// memory may not, and then there is nothing to guard.
    fn test_resource_version(&mut self, resource_version: Option<&str>) {
        if let Some(resource_version) = resource_version {
            self.test(
                pointer(["metadata", "resourceVersion"]),
                json!(resource_version),
            );
        }
    }

    fn add(&mut self, path: PointerBuf, value: Value) {
        self.changes
            .push(PatchOperation::Add(AddOperation { path, value }));
    }

    fn replace(&mut self, path: PointerBuf, value: Value) {
        self.changes
            .push(PatchOperation::Replace(ReplaceOperation { path, value }));
    }

    fn into_patch(self) -> Patch {
        Patch(self.guards.into_iter().chain(self.changes).collect())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::mesh::fixtures::{
        NAMESPACE, applied, destination_rule, remove, set, spec, typed_destination_rule,
        typed_virtual_service, virtual_service,
    };
    use crate::mesh::{MeshError, Routing, Target, resolve};
    use crate::spec::keys;

    const STABLE: &str = "/spec/http/2/route/0";
    const CANARY: &str = "/spec/http/2/route/1";

    fn target_of(vs: &Value, dr: &Value) -> Target {
        target_with(&[], vs, dr)
    }

    fn target_with(annotations: &[(&str, &str)], vs: &Value, dr: &Value) -> Target {
        let routing = Routing {
            virtual_services: &[typed_virtual_service(vs)],
            destination_rules: &[typed_destination_rule(dr)],
            ..Routing::default()
        };
        resolve(&spec(annotations), NAMESPACE, routing).expect("fixtures resolve")
    }

    /// The patch of a subset split's selector, which always goes to its DestinationRule.
    fn subset_version_patch(target: &Target, subset: Subset, label: &str, version: &str) -> Patch {
        let (object, patch) = selector_patch(target, subset, label, version);
        assert_eq!(object, SelectorObject::DestinationRule("shop"));
        patch
    }

    fn swap(value: Value, array: &str, a: usize, b: usize) -> Value {
        let mut value = value;
        value
            .pointer_mut(array)
            .and_then(Value::as_array_mut)
            .expect("an array")
            .swap(a, b);
        value
    }

    #[test]
    fn weight_patch_is_guarded_and_minimal() {
        let vs = virtual_service();
        let patch = weight_patch(
            &target_of(&vs, &destination_rule()),
            Traffic {
                stable: 75,
                canary: 25,
            },
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                { "op": "test", "path": "/spec/http/2/name", "value": "main" },
                { "op": "test", "path": "/spec/http/2/route/0/destination/host", "value": "shop.store.svc.cluster.local" },
                { "op": "test", "path": "/spec/http/2/route/0/destination/subset", "value": "stable" },
                { "op": "test", "path": "/spec/http/2/route/0/weight", "value": 90 },
                { "op": "test", "path": "/spec/http/2/route/1/destination/host", "value": "shop.store.svc.cluster.local" },
                { "op": "test", "path": "/spec/http/2/route/1/destination/subset", "value": "canary" },
                { "op": "test", "path": "/spec/http/2/route/1/weight", "value": 10 },
                { "op": "replace", "path": "/spec/http/2/route/0/weight", "value": 75 },
                { "op": "replace", "path": "/spec/http/2/route/1/weight", "value": 25 },
            ])
        );
        let want = set(
            set(vs.clone(), &format!("{STABLE}/weight"), json!(75)),
            &format!("{CANARY}/weight"),
            json!(25),
        );
        assert_eq!(applied(&patch, &vs).unwrap(), want);
    }

    #[test]
    fn weight_patch_adds_a_missing_canary_destination_after_the_stable_one() {
        let vs = remove(
            remove(virtual_service(), CANARY),
            &format!("{STABLE}/weight"),
        );
        let target = target_of(&vs, &destination_rule());
        let patch = weight_patch(
            &target,
            Traffic {
                stable: 90,
                canary: 10,
            },
        )
        .unwrap();
        let canary = json!({
            "destination": { "host": "shop.store.svc.cluster.local", "subset": "canary", "port": { "number": 8080 } },
            "weight": 10
        });
        let want = set(
            set(vs.clone(), &format!("{STABLE}/weight"), json!(90)),
            CANARY,
            canary,
        );
        assert_eq!(applied(&patch, &vs).unwrap(), want);

        // Without a port on the stable destination, the canary gets none either.
        let vs = remove(vs, &format!("{STABLE}/destination/port"));
        let vs = set(vs, &format!("{STABLE}/destination/host"), json!("shop"));
        let patch = weight_patch(
            &target_of(&vs, &destination_rule()),
            Traffic {
                stable: 100,
                canary: 0,
            },
        )
        .unwrap();
        let canary = json!({ "destination": { "host": "shop", "subset": "canary" }, "weight": 0 });
        let want = set(
            set(vs.clone(), &format!("{STABLE}/weight"), json!(100)),
            CANARY,
            canary,
        );
        assert_eq!(applied(&patch, &vs).unwrap(), want);
    }

    #[test]
    fn weight_patch_keeps_edits_made_elsewhere_since_the_read() {
        let vs = virtual_service();
        let patch = weight_patch(
            &target_of(&vs, &destination_rule()),
            Traffic {
                stable: 50,
                canary: 50,
            },
        )
        .unwrap();
        let edited = set(
            vs,
            "/spec/http/2/retries",
            json!({ "attempts": 5, "retryOn": "gateway-error" }),
        );
        let edited = set(edited, "/spec/http/0/timeout", json!("30s"));
        let edited = set(
            edited,
            "/spec/http/4",
            json!({ "name": "new", "route": [{ "destination": { "host": "cart" } }] }),
        );
        let edited = set(edited, "/metadata/resourceVersion", json!("4712"));
        let want = set(
            set(edited.clone(), &format!("{STABLE}/weight"), json!(50)),
            &format!("{CANARY}/weight"),
            json!(50),
        );
        assert_eq!(applied(&patch, &edited).unwrap(), want);
    }

    #[test]
    fn weight_patch_fails_when_the_route_changed_since_the_read() {
        let vs = virtual_service();
        let patch = weight_patch(
            &target_of(&vs, &destination_rule()),
            Traffic {
                stable: 75,
                canary: 25,
            },
        )
        .unwrap();
        let changed = [
            ("routes reordered", swap(vs.clone(), "/spec/http", 0, 2)),
            (
                "route renamed",
                set(vs.clone(), "/spec/http/2/name", json!("primary")),
            ),
            (
                "destinations swapped",
                swap(vs.clone(), "/spec/http/2/route", 0, 1),
            ),
            (
                "canary moved to another host",
                set(
                    vs.clone(),
                    &format!("{CANARY}/destination/host"),
                    json!("cart"),
                ),
            ),
            (
                "weights changed by someone else",
                set(
                    set(vs.clone(), &format!("{STABLE}/weight"), json!(0)),
                    &format!("{CANARY}/weight"),
                    json!(100),
                ),
            ),
            (
                "canary weight removed",
                remove(vs.clone(), &format!("{CANARY}/weight")),
            ),
        ];
        for (change, doc) in changed {
            assert!(
                applied(&patch, &doc).is_err(),
                "{change}: the patch must not apply"
            );
        }

        // Adding the canary destination cannot test for its absence, so it tests the
        // resourceVersion instead.
        let sole = remove(remove(vs, CANARY), &format!("{STABLE}/weight"));
        let patch = weight_patch(
            &target_of(&sole, &destination_rule()),
            Traffic {
                stable: 90,
                canary: 10,
            },
        )
        .unwrap();
        let added_meanwhile = set(
            set(
                sole.clone(),
                CANARY,
                json!({ "destination": { "host": "shop", "subset": "canary" } }),
            ),
            "/metadata/resourceVersion",
            json!("4712"),
        );
        assert!(applied(&patch, &added_meanwhile).is_err());
        assert!(applied(&patch, &sole).is_ok());
    }

    #[test]
    fn an_unnamed_route_is_guarded_by_its_destinations() {
        let vs = remove(virtual_service(), "/spec/http/2/name");
        let patch = weight_patch(
            &target_of(&vs, &destination_rule()),
            Traffic {
                stable: 0,
                canary: 100,
            },
        )
        .unwrap();
        assert!(!patch.iter().any(|op| op.path().as_str().ends_with("/name")));
        assert!(applied(&patch, &swap(vs.clone(), "/spec/http", 1, 2)).is_err());
        let want = set(
            set(vs.clone(), &format!("{STABLE}/weight"), json!(0)),
            &format!("{CANARY}/weight"),
            json!(100),
        );
        assert_eq!(applied(&patch, &vs).unwrap(), want);
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "weights must be 0..=100 and sum to 100")
    )]
    fn weight_patch_refuses_weights_that_do_not_sum_to_100() {
        let target = target_of(&virtual_service(), &destination_rule());
        for traffic in [
            Traffic {
                stable: 60,
                canary: 60,
            },
            Traffic {
                stable: 0,
                canary: 0,
            },
            Traffic {
                stable: 101,
                canary: 0,
            },
            Traffic {
                stable: 200,
                canary: 156,
            },
        ] {
            assert_eq!(
                weight_patch(&target, traffic),
                Err(MeshError::InvalidTraffic(traffic))
            );
        }
    }

    #[test]
    fn subset_version_patch_replaces_the_guarded_label() {
        let dr = destination_rule();
        let patch = subset_version_patch(
            &target_of(&virtual_service(), &dr),
            Subset::Canary,
            "version",
            "v3",
        );
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                { "op": "test", "path": "/spec/subsets/1/name", "value": "canary" },
                { "op": "test", "path": "/spec/subsets/1/labels/version", "value": "v2" },
                { "op": "replace", "path": "/spec/subsets/1/labels/version", "value": "v3" },
            ])
        );
        assert_eq!(
            applied(&patch, &dr).unwrap(),
            set(dr.clone(), "/spec/subsets/1/labels/version", json!("v3"))
        );

        let edited = set(
            dr.clone(),
            "/spec/trafficPolicy/tls",
            json!({ "mode": "ISTIO_MUTUAL" }),
        );
        let edited = set(edited, "/metadata/resourceVersion", json!("816"));
        let want = set(
            edited.clone(),
            "/spec/subsets/1/labels/version",
            json!("v3"),
        );
        assert_eq!(
            applied(&patch, &edited).unwrap(),
            want,
            "edits elsewhere survive"
        );

        for (change, doc) in [
            ("subsets reordered", swap(dr.clone(), "/spec/subsets", 0, 1)),
            (
                "subset renamed",
                set(dr.clone(), "/spec/subsets/1/name", json!("preview")),
            ),
            (
                "label changed by someone else",
                set(dr.clone(), "/spec/subsets/1/labels/version", json!("v4")),
            ),
        ] {
            assert!(
                applied(&patch, &doc).is_err(),
                "{change}: the patch must not apply"
            );
        }
    }

    #[test]
    fn subset_version_patch_adds_a_missing_label_or_labels_map() {
        let dr = remove(destination_rule(), "/spec/subsets/0/labels/version");
        let patch = subset_version_patch(
            &target_of(&virtual_service(), &dr),
            Subset::Stable,
            "version",
            "v2",
        );
        assert_eq!(
            applied(&patch, &dr).unwrap(),
            set(dr.clone(), "/spec/subsets/0/labels/version", json!("v2"))
        );

        let dr = remove(destination_rule(), "/spec/subsets/1/labels");
        let patch = subset_version_patch(
            &target_of(&virtual_service(), &dr),
            Subset::Canary,
            "version",
            "v3",
        );
        let want = set(
            dr.clone(),
            "/spec/subsets/1/labels",
            json!({ "version": "v3" }),
        );
        assert_eq!(applied(&patch, &dr).unwrap(), want);
        // Creating the map would replace one added meanwhile: the resourceVersion guards it.
        let added_meanwhile = set(
            set(
                dr.clone(),
                "/spec/subsets/1/labels",
                json!({ "app": "shop" }),
            ),
            "/metadata/resourceVersion",
            json!("816"),
        );
        assert!(applied(&patch, &added_meanwhile).is_err());
    }

    #[test]
    fn label_keys_are_escaped_in_pointers() {
        let dr = destination_rule();
        let label = "app.kubernetes.io/version";
        let annotations = [(keys::VERSION_LABEL, label)];
        let patch = subset_version_patch(
            &target_with(&annotations, &virtual_service(), &dr),
            Subset::Stable,
            label,
            "1.5.0",
        );
        assert_eq!(
            patch.last().unwrap().path().as_str(),
            "/spec/subsets/0/labels/app.kubernetes.io~1version"
        );
        let mut want = dr.clone();
        want["spec"]["subsets"][0]["labels"][label] = json!("1.5.0");
        let patched = applied(&patch, &dr).unwrap();
        assert_eq!(patched, want);

        // Replacing it tests the escaped path too.
        let patch = subset_version_patch(
            &target_with(&annotations, &virtual_service(), &patched),
            Subset::Stable,
            label,
            "1.6.0",
        );
        want["spec"]["subsets"][0]["labels"][label] = json!("1.6.0");
        assert_eq!(applied(&patch, &patched).unwrap(), want);

        let odd = "example.com/a~b";
        let patch = subset_version_patch(
            &target_of(&virtual_service(), &dr),
            Subset::Canary,
            odd,
            "x",
        );
        assert_eq!(
            patch.last().unwrap().path().as_str(),
            "/spec/subsets/1/labels/example.com~1a~0b"
        );
        let mut want = dr.clone();
        want["spec"]["subsets"][1]["labels"][odd] = json!("x");
        assert_eq!(applied(&patch, &dr).unwrap(), want);
    }

    fn host_form() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "shop",
            "shop.store",
            "shop.store.svc",
            "shop.store.svc.cluster.local",
        ])
    }

    /// A route weir does not manage, possibly to the same Service.
    fn other_route(index: usize) -> impl Strategy<Value = Value> {
        (
            prop::sample::select(vec![
                "shop",
                "shop.store.svc.cluster.local",
                "cart",
                "shop.legacy",
            ]),
            prop::option::of(0..=100i64),
            prop::option::of(prop::sample::select(vec!["1s", "15s"])),
            any::<bool>(),
        )
            .prop_map(move |(host, weight, timeout, retries)| {
                let mut route = json!({
                    "name": format!("other-{index}"),
                    "route": [{ "destination": { "host": host, "subset": "stable" } }],
                });
                if let Some(weight) = weight {
                    route["route"][0]["weight"] = json!(weight);
                }
                if let Some(timeout) = timeout {
                    route["timeout"] = json!(timeout);
                }
                if retries {
                    route["retries"] = json!({ "attempts": 2, "retryOn": "reset" });
                }
                route
            })
    }

    fn other_routes() -> impl Strategy<Value = Vec<Value>> {
        (0..4usize).prop_flat_map(|count| (0..count).map(other_route).collect::<Vec<_>>())
    }

    /// The managed route: stable weight, canary weight (`None`: no canary destination).
    fn managed_route() -> impl Strategy<Value = Value> {
        let weights = prop_oneof![
            (0..=100u8).prop_map(|stable| (Some(i64::from(stable)), Some(100 - i64::from(stable)))),
            prop::sample::select(vec![None, Some(100)]).prop_map(|stable| (stable, None)),
        ];
        (
            weights,
            host_form(),
            prop::option::of(1..=65535i64),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|((stable, canary), host, port, retries, headers, mirror)| {
                let destination = |subset: &str, weight: Option<i64>| {
                    let mut d = json!({ "destination": { "host": host, "subset": subset } });
                    if let Some(port) = port {
                        d["destination"]["port"] = json!({ "number": port });
                    }
                    if let Some(weight) = weight {
                        d["weight"] = json!(weight);
                    }
                    d
                };
                let mut destinations = vec![destination("stable", stable)];
                if let Some(canary) = canary {
                    destinations.push(destination("canary", Some(canary)));
                }
                let mut route = json!({ "name": "main", "route": destinations, "timeout": "3s" });
                if retries {
                    route["retries"] = json!({ "attempts": 3, "perTryTimeout": "1s" });
                }
                if headers {
                    route["headers"] = json!({ "request": { "set": { "x-weir": "yes" } } });
                }
                if mirror {
                    route["mirror"] = json!({ "host": "shop-shadow" });
                }
                route
            })
    }

    proptest! {
        #[test]
        fn weight_patch_changes_only_the_managed_weights(
            before in other_routes(),
            managed in managed_route(),
            after in other_routes(),
            new_stable in 0..=100u8,
        ) {
            let index = before.len();
            let http: Vec<Value> = before.into_iter().chain([managed.clone()]).chain(after).collect();
            let vs = set(virtual_service(), "/spec/http", json!(http));
            let target = target_with(&[(keys::ROUTE, "main")], &vs, &destination_rule());
            let traffic = Traffic { stable: new_stable, canary: 100 - new_stable };
            let patch = weight_patch(&target, traffic).unwrap();
            let patched = applied(&patch, &vs).unwrap();

            let route = format!("/spec/http/{index}/route");
            let mut want = set(vs.clone(), &format!("{route}/0/weight"), json!(traffic.stable));
            if managed["route"].as_array().unwrap().len() == 2 {
                want = set(want, &format!("{route}/1/weight"), json!(traffic.canary));
            } else {
                let mut canary = managed["route"][0].clone();
                canary["destination"]["subset"] = json!("canary");
                canary["weight"] = json!(traffic.canary);
                want = set(want, &format!("{route}/1"), canary);
            }
            prop_assert_eq!(&patched, &want);

            let weights: Vec<i64> = patched.pointer(&route).unwrap().as_array().unwrap().iter()
                .map(|d| d["weight"].as_i64().unwrap())
                .collect();
            prop_assert_eq!(weights.len(), 2);
            prop_assert_eq!(weights.iter().sum::<i64>(), 100);

            // The patched route resolves again, to the weights just written.
            let again = target_with(&[(keys::ROUTE, "main")], &patched, &destination_rule());
            prop_assert_eq!(again.traffic, traffic);
        }

        #[test]
        fn subset_version_patch_changes_only_the_label(
            label in "[a-z]{1,8}(\\.[a-z]{1,8})?(/[a-z~]{1,8})?",
            version in "[a-z0-9][a-z0-9.-]{0,20}",
            canary in any::<bool>(),
        ) {
            let dr = destination_rule();
            let subset = if canary { Subset::Canary } else { Subset::Stable };
            let patch = subset_version_patch(&target_of(&virtual_service(), &dr), subset, &label, &version);
            let mut want = dr.clone();
            want["spec"]["subsets"][usize::from(canary)]["labels"][&label] = json!(version);
            prop_assert_eq!(applied(&patch, &dr).unwrap(), want);
        }
    }
}
