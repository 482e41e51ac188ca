//! A host-level split through a Gateway API HTTPRoute: the managed rule's backendRefs
//! are the stable and canary Services; weir edits their weights only.

use serde_json::{Value, json};

use super::fixtures::{
    HOST_SPLIT, NAMESPACE, applied, host_split_virtual_service, http_route, remove, set, spec,
    split_service, typed_http_route, typed_service, typed_virtual_service, virtual_service,
};
use super::{MeshError, RouteKind, Routing, Target, resolve, weight_patch};
use crate::plan::{Subsets, Traffic};
use crate::spec::{SplitServices, keys};

const RULE: &str = "/spec/rules/1";
const STABLE: &str = "/spec/rules/1/backendRefs/0";
const CANARY: &str = "/spec/rules/1/backendRefs/1";

fn run(
    annotations: &[(&str, &str)],
    virtual_services: &[Value],
    http_routes: &[Value],
) -> Result<Target, MeshError> {
    let mut all = HOST_SPLIT.to_vec();
    all.extend_from_slice(annotations);
    let services = [
        split_service("shop-stable", "v1"),
        split_service("shop-canary", "v2"),
    ];
    let services: Vec<_> = services.iter().map(typed_service).collect();
    let virtual_services: Vec<_> = virtual_services.iter().map(typed_virtual_service).collect();
    let http_routes: Vec<_> = http_routes.iter().map(typed_http_route).collect();
    let routing = Routing {
        virtual_services: &virtual_services,
        http_routes: &http_routes,
        services: &services,
        ..Routing::default()
    };
    resolve(&spec(&all), NAMESPACE, routing)
}

#[test]
fn the_only_http_route_to_the_stable_service_is_found_with_its_rule() {
    // The subset-split VirtualService routes to `shop`, not to `shop-stable`.
    let target = run(&[], &[virtual_service()], &[http_route()]).unwrap();
    assert_eq!(target.route_kind, RouteKind::HttpRoute);
    assert_eq!(target.route_object.name, "shop");
    assert_eq!(target.route.index, 1);
    assert_eq!(target.route.name.as_deref(), Some("primary"));
    assert_eq!(target.stable_destination.host, "shop-stable");
    assert_eq!(target.stable_destination.port, Some(8080));
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
}

#[test]
fn backend_weights_are_guarded_by_name_and_nothing_else_changes() {
    let hr = http_route();
    let target = run(&[], &[], std::slice::from_ref(&hr)).unwrap();
    let patch = weight_patch(
        &target,
        Traffic {
            stable: 50,
            canary: 50,
        },
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([
            { "op": "test", "path": "/spec/rules/1/name", "value": "primary" },
            { "op": "test", "path": "/spec/rules/1/backendRefs/0/name", "value": "shop-stable" },
            { "op": "test", "path": "/spec/rules/1/backendRefs/0/weight", "value": 90 },
            { "op": "test", "path": "/spec/rules/1/backendRefs/1/name", "value": "shop-canary" },
            { "op": "test", "path": "/spec/rules/1/backendRefs/1/weight", "value": 10 },
            { "op": "replace", "path": "/spec/rules/1/backendRefs/0/weight", "value": 50 },
            { "op": "replace", "path": "/spec/rules/1/backendRefs/1/weight", "value": 50 },
        ])
    );
    let want = set(
        set(hr.clone(), &format!("{STABLE}/weight"), json!(50)),
        &format!("{CANARY}/weight"),
        json!(50),
    );
    assert_eq!(applied(&patch, &hr).unwrap(), want);
}

#[test]
fn a_sole_stable_backend_at_the_default_weight_is_all_traffic_and_gets_a_canary_added() {
    let hr = remove(http_route(), CANARY);
    let hr = set(hr, &format!("{STABLE}/weight"), json!(1));
    let target = run(&[], &[], std::slice::from_ref(&hr)).unwrap();
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
    let patched = applied(&patch, &hr).unwrap();
    assert_eq!(
        patched.pointer(CANARY),
        Some(&json!({ "name": "shop-canary", "port": 8080, "weight": 10 }))
    );
    assert_eq!(
        patched.pointer(&format!("{STABLE}/weight")),
        Some(&json!(90))
    );
    // Only the managed rule's backendRefs changed.
    let mut unchanged = patched.clone();
    let mut before = hr.clone();
    for doc in [&mut unchanged, &mut before] {
        *doc.pointer_mut(&format!("{RULE}/backendRefs")).unwrap() = json!(null);
    }
    assert_eq!(unchanged, before);
    assert!(
        serde_json::to_string(&patch)
            .unwrap()
            .contains("resourceVersion"),
        "an add is guarded by the resourceVersion"
    );
    // A missing weight is Gateway API's default, 1: still all traffic.
    let hr = remove(remove(http_route(), CANARY), &format!("{STABLE}/weight"));
    let target = run(&[], &[], &[hr]).unwrap();
    assert_eq!(
        target.traffic,
        Traffic {
            stable: 100,
            canary: 0
        }
    );
}

#[test]
fn every_misconfiguration_of_an_http_route_is_named() {
    let s = String::from;
    let split = || {
        Box::new(SplitServices {
            stable: s("shop-stable"),
            canary: s("shop-canary"),
        })
    };
    type Case = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        Vec<Value>,
        Vec<Value>,
        MeshError,
    );
    let cases: Vec<Case> = vec![
        (
            "weights that are not percentages",
            vec![],
            vec![],
            vec![set(http_route(), &format!("{CANARY}/weight"), json!(1))],
            MeshError::BackendWeightsNotHundred {
                http_route: s("shop"),
                rule: s("\"primary\""),
                stable: 90,
                canary: 1,
            },
        ),
        (
            "a third backend in the rule",
            vec![],
            vec![],
            vec![set(
                http_route(),
                &format!("{RULE}/backendRefs/2"),
                json!({ "name": "shop", "port": 8080 }),
            )],
            MeshError::ForeignBackend {
                http_route: s("shop"),
                rule: s("\"primary\""),
                backend: s("Service \"shop\""),
                split: split(),
            },
        ),
        (
            "the canary Service in another namespace",
            vec![],
            vec![],
            vec![set(
                http_route(),
                &format!("{CANARY}/namespace"),
                json!("other"),
            )],
            MeshError::ForeignBackend {
                http_route: s("shop"),
                rule: s("\"primary\""),
                backend: s("Service \"shop-canary\" in namespace \"other\""),
                split: split(),
            },
        ),
        (
            "the stable Service twice",
            vec![],
            vec![],
            vec![set(
                http_route(),
                &format!("{CANARY}/name"),
                json!("shop-stable"),
            )],
            MeshError::DuplicateBackend {
                http_route: s("shop"),
                rule: s("\"primary\""),
                service: s("shop-stable"),
            },
        ),
        (
            "a rule name that does not exist",
            vec![(keys::ROUTE, "main")],
            vec![],
            vec![http_route()],
            MeshError::RuleNotFound {
                http_route: s("shop"),
                rule: s("main"),
                available: vec![s("debug"), s("primary")],
            },
        ),
        (
            "a named rule that does not reach the stable Service",
            vec![(keys::ROUTE, "debug")],
            vec![],
            vec![http_route()],
            MeshError::RuleNotOnService {
                http_route: s("shop"),
                rule: s("\"debug\""),
                service: s("shop-stable"),
            },
        ),
        (
            "two rules to the stable Service",
            vec![],
            vec![],
            vec![set(
                http_route(),
                "/spec/rules/0/backendRefs/0/name",
                json!("shop-stable"),
            )],
            MeshError::SeveralRules {
                http_route: s("shop"),
                service: s("shop-stable"),
                rules: vec![s("\"debug\""), s("\"primary\"")],
            },
        ),
        (
            "an HTTPRoute name that does not exist",
            vec![(keys::HTTP_ROUTE, "web")],
            vec![],
            vec![http_route()],
            MeshError::HttpRouteNotFound {
                name: s("web"),
                namespace: s(NAMESPACE),
                available: vec![s("shop")],
            },
        ),
        (
            "a VirtualService and an HTTPRoute both route to the stable Service",
            vec![],
            vec![host_split_virtual_service()],
            vec![http_route()],
            MeshError::SeveralRoutingObjects {
                service: s("shop-stable"),
                names: vec![s("HTTPRoute \"shop\""), s("VirtualService \"shop\"")],
            },
        ),
    ];
    for (name, annotations, virtual_services, http_routes, want) in cases {
        assert_eq!(
            run(&annotations, &virtual_services, &http_routes),
            Err(want),
            "{name}"
        );
    }
}

#[test]
fn an_annotation_chooses_between_a_virtual_service_and_an_http_route() {
    let both = ([host_split_virtual_service()], [http_route()]);
    let target = run(&[(keys::HTTP_ROUTE, "shop")], &both.0, &both.1).unwrap();
    assert_eq!(target.route_kind, RouteKind::HttpRoute);
    let target = run(&[(keys::VIRTUAL_SERVICE, "shop")], &both.0, &both.1).unwrap();
    assert_eq!(target.route_kind, RouteKind::VirtualService);
}

#[test]
fn errors_name_the_object_and_the_fix() {
    let err = run(&[], &[host_split_virtual_service()], &[http_route()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "several objects route to Service \"shop-stable\" (HTTPRoute \"shop\", VirtualService \
         \"shop\"); set weir.dev/virtual-service or weir.dev/http-route to the one weir should edit"
    );
}
