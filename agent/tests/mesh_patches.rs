//! weir's JSON Patches against a real kube-apiserver with Istio's CRDs: the schema accepts
//! every object weir writes, the `test` guards make the apiserver reject a patch built
//! from a stale read, and edits made by others since the read survive.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weir::mesh::{self, DestinationRule, Target, VirtualService};
use weir::plan::{Subset, Subsets, Traffic};
use weir::spec::{self, Defaults, keys};
use weir_testbed::ControlPlane;

const NAMESPACE: &str = "store";

fn virtual_service() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": { "name": "shop", "namespace": NAMESPACE },
        "spec": {
            "hosts": ["shop.store.svc.cluster.local"],
            "http": [
                {
                    "name": "cart",
                    "match": [{ "uri": { "prefix": "/cart" } }],
                    "route": [{ "destination": { "host": "cart", "port": { "number": 80 } } }]
                },
                {
                    "name": "main",
                    "route": [{ "destination": { "host": "shop", "subset": "stable", "port": { "number": 8080 } } }],
                    "retries": { "attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx" },
                    "timeout": "10s",
                    "headers": { "request": { "set": { "x-shop": "1" } } },
                    "mirror": { "host": "shop-shadow" },
                    "mirrorPercentage": { "value": 2.5 }
                }
            ]
        }
    })
}

fn destination_rule() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": { "name": "shop", "namespace": NAMESPACE },
        "spec": {
            "host": "shop.store.svc.cluster.local",
            "trafficPolicy": { "loadBalancer": { "simple": "LEAST_REQUEST" } },
            "subsets": [
                { "name": "stable", "labels": { "app": "shop", "version": "v1" } },
                { "name": "canary" }
            ]
        }
    })
}

struct Mesh {
    client: kube::Client,
    spec: spec::RolloutSpec,
    virtual_services: Api<DynamicObject>,
    destination_rules: Api<DynamicObject>,
}

/// The patch of a subset split's selector, which always goes to its DestinationRule.
fn subset_version_patch(
    target: &Target,
    subset: Subset,
    label: &str,
    version: &str,
) -> json_patch::Patch {
    let (object, patch) = mesh::selector_patch(target, subset, label, version);
    assert_eq!(object, mesh::SelectorObject::DestinationRule("shop"));
    patch
}

impl Mesh {
    /// Lists both kinds with weir's own types and resolves the Service `shop`.
    async fn resolve(&self) -> anyhow::Result<Target> {
        let virtual_services = Api::<VirtualService>::namespaced(self.client.clone(), NAMESPACE)
            .list(&ListParams::default())
            .await?
            .items;
        let destination_rules = Api::<DestinationRule>::namespaced(self.client.clone(), NAMESPACE)
            .list(&ListParams::default())
            .await?
            .items;
        let routing = mesh::Routing {
            virtual_services: &virtual_services,
            destination_rules: &destination_rules,
            ..mesh::Routing::default()
        };
        Ok(mesh::resolve(&self.spec, NAMESPACE, routing)?)
    }

    async fn vs_spec(&self) -> anyhow::Result<Value> {
        Ok(self.virtual_services.get("shop").await?.data["spec"].clone())
    }

    async fn dr_spec(&self) -> anyhow::Result<Value> {
        Ok(self.destination_rules.get("shop").await?.data["spec"].clone())
    }
}

fn traffic(stable: u8, canary: u8) -> Traffic {
    Traffic { stable, canary }
}

/// Applies a JSON Patch the way the controller does.
async fn patch(api: &Api<DynamicObject>, patch: json_patch::Patch) -> kube::Result<DynamicObject> {
    api.patch("shop", &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
}

/// A person's edit, also as a JSON Patch.
async fn edit(api: &Api<DynamicObject>, ops: Value) -> anyhow::Result<()> {
    patch(api, serde_json::from_value(ops)?).await?;
    Ok(())
}

/// The apiserver answers a failed `test` operation with 422 Invalid, like any patch it
/// cannot apply; the controller re-reads and re-plans on it.
fn assert_rejected(result: kube::Result<DynamicObject>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 422 => {}
        other => panic!("the apiserver should have rejected the patch with 422, got {other:?}"),
    }
}

#[tokio::test]
async fn patches_apply_to_istio_objects_and_guards_hold() -> anyhow::Result<()> {
    let control_plane = ControlPlane::start().await?;
    control_plane.create_namespace(NAMESPACE).await?;
    let client = control_plane.client();
    let resource = |kind| {
        ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "networking.istio.io",
            "v1",
            kind,
        ))
    };
    let mesh = Mesh {
        client: client.clone(),
        spec: spec::parse(
            "shop",
            &BTreeMap::from([(keys::ENABLED.to_owned(), "true".to_owned())]),
            &Defaults::default(),
        )?,
        virtual_services: Api::namespaced_with(
            client.clone(),
            NAMESPACE,
            &resource("VirtualService"),
        ),
        destination_rules: Api::namespaced_with(
            client.clone(),
            NAMESPACE,
            &resource("DestinationRule"),
        ),
    };
    let post = PostParams::default();
    mesh.virtual_services
        .create(&post, &serde_json::from_value(virtual_service())?)
        .await?;
    mesh.destination_rules
        .create(&post, &serde_json::from_value(destination_rule())?)
        .await?;

    let first = mesh.resolve().await?;
    assert_eq!(first.traffic, traffic(100, 0));
    assert_eq!(first.canary_destination, None);
    assert_eq!(
        first.subsets,
        Subsets {
            stable: Some("v1".into()),
            canary: None
        }
    );

    // Someone edits the managed route after weir's read: adding the canary destination is
    // guarded by the resourceVersion, so the stale patch is rejected; a fresh one applies.
    edit(
        &mesh.virtual_services,
        json!([{ "op": "add", "path": "/spec/http/1/timeout", "value": "20s" }]),
    )
    .await?;
    let stale = mesh::weight_patch(&first, traffic(90, 10))?;
    assert_rejected(patch(&mesh.virtual_services, stale).await);
    let before = mesh.vs_spec().await?;
    let fresh = mesh.resolve().await?;
    patch(
        &mesh.virtual_services,
        mesh::weight_patch(&fresh, traffic(90, 10))?,
    )
    .await?;
    let mut want = before.clone();
    want["http"][1]["route"][0]["weight"] = json!(90);
    want["http"][1]["route"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "destination": { "host": "shop", "subset": "canary", "port": { "number": 8080 } }, "weight": 10 }));
    assert_eq!(
        mesh.vs_spec().await?,
        want,
        "only the stable weight and the canary destination changed"
    );

    // The canary subset has no labels map: it is created.
    let before = mesh.dr_spec().await?;
    patch(
        &mesh.destination_rules,
        subset_version_patch(&fresh, Subset::Canary, "version", "v2"),
    )
    .await?;
    let mut want = before.clone();
    want["subsets"][1]["labels"] = json!({ "version": "v2" });
    assert_eq!(mesh.dr_spec().await?, want);

    // Edits elsewhere after the read neither conflict nor get lost.
    let target = mesh.resolve().await?;
    assert_eq!(target.traffic, traffic(90, 10));
    assert_eq!(
        target.subsets,
        Subsets {
            stable: Some("v1".into()),
            canary: Some("v2".into())
        }
    );
    edit(
        &mesh.virtual_services,
        json!([
            { "op": "replace", "path": "/spec/http/1/retries", "value": { "attempts": 5, "retryOn": "gateway-error" } },
            { "op": "add", "path": "/spec/http/0/timeout", "value": "3s" },
            { "op": "add", "path": "/spec/http/-", "value": { "name": "late", "route": [{ "destination": { "host": "cart" } }] } },
        ]),
    )
    .await?;
    let before = mesh.vs_spec().await?;
    patch(
        &mesh.virtual_services,
        mesh::weight_patch(&target, traffic(75, 25))?,
    )
    .await?;
    let mut want = before.clone();
    want["http"][1]["route"][0]["weight"] = json!(75);
    want["http"][1]["route"][1]["weight"] = json!(25);
    assert_eq!(
        mesh.vs_spec().await?,
        want,
        "the foreign edits survive the weight patch"
    );

    // Someone moves the managed route: the guards reject the stale patch.
    let target = mesh.resolve().await?;
    edit(
        &mesh.virtual_services,
        json!([{ "op": "move", "from": "/spec/http/1", "path": "/spec/http/0" }]),
    )
    .await?;
    let before = mesh.vs_spec().await?;
    let stale = mesh::weight_patch(&target, traffic(50, 50))?;
    assert_rejected(patch(&mesh.virtual_services, stale).await);
    assert_eq!(
        mesh.vs_spec().await?,
        before,
        "a rejected patch changes nothing"
    );
    let target = mesh.resolve().await?;
    assert_eq!(target.route.index, 0);
    patch(
        &mesh.virtual_services,
        mesh::weight_patch(&target, traffic(50, 50))?,
    )
    .await?;

    // Someone renames a subset: the subset patch is rejected.
    edit(
        &mesh.destination_rules,
        json!([{ "op": "replace", "path": "/spec/subsets/0/name", "value": "primary" }]),
    )
    .await?;
    let stale = subset_version_patch(&target, Subset::Stable, "version", "v2");
    assert_rejected(patch(&mesh.destination_rules, stale).await);
    edit(
        &mesh.destination_rules,
        json!([{ "op": "replace", "path": "/spec/subsets/0/name", "value": "stable" }]),
    )
    .await?;

    // Promotion: the stable subset moves to v2, under a label key that needs escaping too.
    let target = mesh.resolve().await?;
    let before = mesh.dr_spec().await?;
    patch(
        &mesh.destination_rules,
        subset_version_patch(&target, Subset::Stable, "version", "v2"),
    )
    .await?;
    let target = mesh.resolve().await?;
    patch(
        &mesh.destination_rules,
        subset_version_patch(
            &target,
            Subset::Stable,
            "app.kubernetes.io/version",
            "2.0.0",
        ),
    )
    .await?;
    patch(
        &mesh.virtual_services,
        mesh::weight_patch(&target, traffic(100, 0))?,
    )
    .await?;
    let mut want = before.clone();
    want["subsets"][0]["labels"]["version"] = json!("v2");
    want["subsets"][0]["labels"]["app.kubernetes.io/version"] = json!("2.0.0");
    assert_eq!(mesh.dr_spec().await?, want);

    let last = mesh.resolve().await?;
    assert_eq!(last.traffic, traffic(100, 0));
    assert_eq!(
        last.subsets,
        Subsets {
            stable: Some("v2".into()),
            canary: Some("v2".into())
        }
    );
    Ok(())
}

/// A host-level split through a Gateway API HTTPRoute on the real CRD (its schema,
/// defaults and CEL rules) and real Services: the canary backendRef weir adds is valid,
/// the apiserver's defaults read back as the same traffic, a stale weight patch is
/// refused, and the Service selector patch changes the version only.
#[tokio::test]
async fn http_route_and_service_selector_patches_apply_and_guards_hold() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use weir::mesh::HttpRoute;

    let control_plane = ControlPlane::start().await?;
    control_plane.create_namespace(NAMESPACE).await?;
    let client = control_plane.client();
    let routes = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        NAMESPACE,
        &ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            "httproutes",
        ),
    );
    let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    let post = PostParams::default();
    for (name, version) in [("shop-stable", "v1"), ("shop-canary", "v1")] {
        let service = json!({
            "metadata": { "name": name },
            "spec": { "selector": { "app": "shop", "version": version }, "ports": [{ "port": 8080 }] }
        });
        services
            .create(&post, &serde_json::from_value(service)?)
            .await?;
    }
    // As people write it: no weight (Gateway API's default is 1), no kind or group.
    let written = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": "shop", "namespace": NAMESPACE },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "shop", "port": 8080 }],
            "rules": [
                {
                    "name": "debug",
                    "matches": [{ "headers": [{ "name": "x-debug", "value": "1" }] }],
                    "backendRefs": [{ "name": "shop-debug", "port": 8080 }]
                },
                {
                    "name": "primary",
                    "filters": [{ "type": "RequestHeaderModifier", "requestHeaderModifier": { "set": [{ "name": "x-shop", "value": "1" }] } }],
                    "timeouts": { "request": "10s" },
                    "backendRefs": [{ "name": "shop-stable", "port": 8080 }]
                }
            ]
        }
    });
    routes
        .create(&post, &serde_json::from_value(written)?)
        .await?;
    let spec = spec::parse(
        "shop",
        &BTreeMap::from([
            (keys::ENABLED.to_owned(), "true".to_owned()),
            (keys::STABLE_SERVICE.to_owned(), "shop-stable".to_owned()),
            (keys::CANARY_SERVICE.to_owned(), "shop-canary".to_owned()),
        ]),
        &Defaults::default(),
    )?;
    let resolve = || async {
        let http_routes = Api::<HttpRoute>::namespaced(client.clone(), NAMESPACE)
            .list(&ListParams::default())
            .await?
            .items;
        let services = services.list(&ListParams::default()).await?.items;
        let routing = mesh::Routing {
            http_routes: &http_routes,
            services: &services,
            ..mesh::Routing::default()
        };
        anyhow::Ok(mesh::resolve(&spec, NAMESPACE, routing)?)
    };
    let rules = || async { anyhow::Ok(routes.get("shop").await?.data["spec"]["rules"].clone()) };

    let first = resolve().await?;
    assert_eq!(first.route_kind, mesh::RouteKind::HttpRoute);
    assert_eq!(
        first.traffic,
        traffic(100, 0),
        "a sole backend at the default weight"
    );
    assert_eq!(
        first.stable_destination.weight,
        Some(1),
        "the apiserver's default"
    );
    let before = rules().await?;
    patch(&routes, mesh::weight_patch(&first, traffic(90, 10))?).await?;
    let mut want = before.clone();
    want[1]["backendRefs"][0]["weight"] = json!(90);
    let added = json!({ "group": "", "kind": "Service", "name": "shop-canary", "port": 8080, "weight": 10 });
    want[1]["backendRefs"]
        .as_array_mut()
        .expect("backendRefs")
        .push(added);
    assert_eq!(
        rules().await?,
        want,
        "only the weights and the canary backendRef"
    );

    // A foreign edit of the managed rule since the read: the stale patch is refused;
    // after a fresh read the next step applies over it.
    let stale = mesh::weight_patch(&resolve().await?, traffic(75, 25))?;
    edit(
        &routes,
        json!([{ "op": "replace", "path": "/spec/rules/1/backendRefs/1/weight", "value": 0 },
               { "op": "replace", "path": "/spec/rules/1/backendRefs/0/weight", "value": 100 }]),
    )
    .await?;
    assert_rejected(patch(&routes, stale).await);
    let fresh = resolve().await?;
    assert_eq!(fresh.traffic, traffic(100, 0));
    patch(&routes, mesh::weight_patch(&fresh, traffic(75, 25))?).await?;
    assert_eq!(resolve().await?.traffic, traffic(75, 25));

    // The canary Service's selector moves to v2; everything else of it stays.
    let before = serde_json::to_value(services.get("shop-canary").await?)?;
    let (object, selector) = mesh::selector_patch(&fresh, Subset::Canary, "version", "v2");
    assert_eq!(object, mesh::SelectorObject::Service("shop-canary"));
    services
        .patch(
            "shop-canary",
            &PatchParams::default(),
            &Patch::<()>::Json(selector),
        )
        .await?;
    let after = serde_json::to_value(services.get("shop-canary").await?)?;
    assert_eq!(
        after["spec"]["selector"],
        json!({ "app": "shop", "version": "v2" })
    );
    let strip = |mut v: Value| {
        v["spec"]["selector"] = Value::Null;
        v["metadata"] = Value::Null;
        v
    };
    assert_eq!(strip(after), strip(before));
    assert_eq!(
        resolve().await?.subsets,
        Subsets {
            stable: Some("v1".into()),
            canary: Some("v2".into())
        }
    );
    Ok(())
}
