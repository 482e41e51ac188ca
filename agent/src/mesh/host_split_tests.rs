//! A host-level split: the managed route's destinations are two Services, each
//! selecting one version; weir edits their weights and the Services' version selector.

use serde_json::{Value, json};

use super::fixtures::{
    HOST_SPLIT, NAMESPACE, applied, destination_rule, host_split_virtual_service, remove, set,
    spec, split_service, typed_destination_rule, typed_service, typed_virtual_service,
};
use super::{
    ManagedService, MeshError, ObjectVersion, Routing, SelectorObject, Selectors, Target, resolve,
    selector_patch, weight_patch,
};
use crate::plan::{Subset, Subsets, Traffic};
use crate::spec::{SplitServices, keys};

const STABLE: &str = "/spec/http/2/route/0";
const CANARY: &str = "/spec/http/2/route/1";

fn services() -> Vec<Value> {
    vec![
        split_service("shop-stable", "v1"),
        split_service("shop-canary", "v2"),
    ]
}

fn run(annotations: &[(&str, &str)], vs: &Value, services: &[Value]) -> Result<Target, MeshError> {
    let services: Vec<_> = services.iter().map(typed_service).collect();
    // A DestinationRule for the Service is there, and must not matter.
    let routing = Routing {
        virtual_services: &[typed_virtual_service(vs)],
        destination_rules: &[typed_destination_rule(&destination_rule())],
        http_routes: &[],
        services: &services,
    };
    resolve(&spec(annotations), NAMESPACE, routing)
}

#[test]
fn the_route_and_versions_come_from_the_two_services() {
    let target = run(&HOST_SPLIT, &host_split_virtual_service(), &services()).unwrap();
    assert_eq!(target.route.index, 2);
    assert_eq!(
        target.stable_destination.host,
        "shop-stable.store.svc.cluster.local"
    );
    assert_eq!(target.stable_destination.subset, None);
    assert_eq!(target.canary_destination.as_ref().map(|d| d.index), Some(1));
    assert_eq!(
        target.traffic,
        Traffic {
            stable: 90,
            canary: 10
        }
    );
    assert_eq!(
        target.subsets,
        Subsets {
            stable: Some("v1".into()),
            canary: Some("v2".into())
        }
    );
    let Selectors::Services { stable, canary } = &target.selectors else {
        panic!(
            "a host-level split selects by Service: {:?}",
            target.selectors
        );
    };
    assert_eq!(
        stable,
        &ManagedService {
            object: ObjectVersion {
                name: "shop-stable".into(),
                resource_version: Some("912".into())
            },
            selector: [
                ("app".into(), "shop".into()),
                ("version".into(), "v1".into())
            ]
            .into(),
        }
    );
    assert_eq!(canary.object.name, "shop-canary");
    assert_eq!(
        target.selectors.describe(Subset::Canary),
        r#"Service "shop-canary""#
    );
}

#[test]
fn weights_are_guarded_by_host_and_nothing_else_changes() {
    let vs = host_split_virtual_service();
    let target = run(&HOST_SPLIT, &vs, &services()).unwrap();
    let patch = weight_patch(
        &target,
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
            { "op": "test", "path": "/spec/http/2/route/0/destination/host", "value": "shop-stable.store.svc.cluster.local" },
            { "op": "test", "path": "/spec/http/2/route/0/weight", "value": 90 },
            { "op": "test", "path": "/spec/http/2/route/1/destination/host", "value": "shop-canary.store.svc.cluster.local" },
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
fn a_missing_canary_destination_is_added_on_the_canary_service_in_the_stable_form() {
    for (stable_host, canary_host) in [
        ("shop-stable", "shop-canary"),
        ("shop-stable.store", "shop-canary.store"),
        (
            "shop-stable.store.svc.cluster.local",
            "shop-canary.store.svc.cluster.local",
        ),
    ] {
        let vs = remove(host_split_virtual_service(), CANARY);
        let vs = set(
            vs,
            &format!("{STABLE}/destination/host"),
            json!(stable_host),
        );
        let vs = remove(vs, &format!("{STABLE}/weight"));
        let target = run(&HOST_SPLIT, &vs, &services()).unwrap();
        assert_eq!(
            target.traffic,
            Traffic {
                stable: 100,
                canary: 0
            }
        );
        let patch = weight_patch(
            &target,
            Traffic {
                stable: 90,
                canary: 10,
            },
        )
        .unwrap();
        let patched = applied(&patch, &vs).unwrap();
        assert_eq!(
            patched.pointer(CANARY),
            Some(&json!({
                "destination": { "host": canary_host, "port": { "number": 8080 } },
                "weight": 10
            })),
            "{stable_host}"
        );
        // Without a canary destination there is nothing to test it by: the
        // resourceVersion guards the add.
        assert!(
            serde_json::to_string(&patch)
                .unwrap()
                .contains("resourceVersion"),
            "{stable_host}"
        );
    }
}

#[test]
fn the_version_is_set_in_the_services_selector_only() {
    let target = run(&HOST_SPLIT, &host_split_virtual_service(), &services()).unwrap();
    let (object, patch) = selector_patch(&target, Subset::Stable, "version", "v2");
    assert_eq!(object, SelectorObject::Service("shop-stable"));
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([
            { "op": "test", "path": "/spec/selector/version", "value": "v1" },
            { "op": "replace", "path": "/spec/selector/version", "value": "v2" },
        ])
    );
    let service = split_service("shop-stable", "v1");
    let want = set(service.clone(), "/spec/selector/version", json!("v2"));
    assert_eq!(applied(&patch, &service).unwrap(), want);

    // A selector without the version label gets it (label keys with `/` are escaped).
    let (object, patch) =
        selector_patch(&target, Subset::Canary, "app.kubernetes.io/version", "2.0");
    assert_eq!(object, SelectorObject::Service("shop-canary"));
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([{ "op": "add", "path": "/spec/selector/app.kubernetes.io~1version", "value": "2.0" }])
    );
}

#[test]
fn every_misconfiguration_of_a_host_split_is_named() {
    let vs = host_split_virtual_service;
    let s = String::from;
    let cases: Vec<(&str, Value, Vec<Value>, MeshError)> = vec![
        (
            "a subset on a split host",
            set(
                vs(),
                &format!("{CANARY}/destination/subset"),
                json!("canary"),
            ),
            services(),
            MeshError::SubsetInHostSplit {
                virtual_service: s("shop"),
                route: s("\"main\""),
                host: s("shop-canary.store.svc.cluster.local"),
                subset: s("canary"),
            },
        ),
        (
            "a third host in the route",
            set(vs(), &format!("{CANARY}/destination/host"), json!("shop")),
            services(),
            MeshError::ForeignHost {
                virtual_service: s("shop"),
                route: s("\"main\""),
                host: s("shop"),
                split: Box::new(SplitServices {
                    stable: s("shop-stable"),
                    canary: s("shop-canary"),
                }),
            },
        ),
        (
            "two destinations on the stable host",
            set(
                vs(),
                &format!("{CANARY}/destination/host"),
                json!("shop-stable"),
            ),
            services(),
            MeshError::DuplicateDestination {
                virtual_service: s("shop"),
                route: s("\"main\""),
                destination: s("host \"shop-stable\""),
            },
        ),
        (
            "no route to the stable Service",
            set(
                vs(),
                &format!("{STABLE}/destination/host"),
                json!("shop-canary"),
            ),
            services(),
            MeshError::NoRouteToService {
                namespace: s(NAMESPACE),
                service: s("shop-stable"),
            },
        ),
        (
            "the canary Service is missing",
            vs(),
            vec![split_service("shop-stable", "v1")],
            MeshError::SplitServiceNotFound {
                name: s("shop-canary"),
                key: keys::CANARY_SERVICE,
                namespace: s(NAMESPACE),
            },
        ),
        (
            "the stable Service has no selector",
            vs(),
            vec![
                remove(split_service("shop-stable", "v1"), "/spec/selector"),
                split_service("shop-canary", "v2"),
            ],
            MeshError::SplitServiceWithoutSelector {
                name: s("shop-stable"),
                key: keys::STABLE_SERVICE,
            },
        ),
    ];
    for (name, vs, services, want) in cases {
        assert_eq!(run(&HOST_SPLIT, &vs, &services), Err(want), "{name}");
    }
}

#[test]
fn a_subset_split_still_ignores_services() {
    // Without the two annotations the DestinationRule decides, whatever Services exist.
    let target = run(&[], &super::fixtures::virtual_service(), &services()).unwrap();
    assert!(matches!(target.selectors, Selectors::Subsets { .. }));
}
