//! Leader election against an API with server-side-apply ownership on Leases
//! (`support/fake_api.rs`): one leader at a time, handover on release, and a leader that
//! sees its lease taken stops.

mod support;

use kandle_operator::leader::{ElectionConfig, Leadership};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::fake_api::{start, Store};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kandle-system/leases/kandle-operator-leader";

fn cfg(identity: &str) -> ElectionConfig {
    ElectionConfig {
        lease_name: "kandle-operator-leader".into(),
        namespace: "kandle-system".into(),
        identity: identity.into(),
        lease_duration_secs: 2,
        renew_before_secs: 1,
    }
}

fn holder(store: &Mutex<Store>) -> Option<String> {
    store.lock().unwrap().objects.get(LEASE).and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_with_handover_and_loss() {
    let store = Arc::new(Mutex::new(Store::default()));
    let client = start(store.clone());
    let a = Leadership::acquire(client.clone(), &cfg("operator-a")).await.unwrap();
    assert_eq!(holder(&store).as_deref(), Some("operator-a"));

    let standby = {
        let client = client.clone();
        tokio::spawn(async move { Leadership::acquire(client, &cfg("operator-b")).await })
    };
    // Longer than the lease lasts: the leader keeps renewing, so the standby keeps waiting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!standby.is_finished(), "a second leader while the first renews");
    assert_eq!(holder(&store).as_deref(), Some("operator-a"));

    a.release().await;
    let b = tokio::time::timeout(Duration::from_secs(10), standby).await.expect("standby takes over").unwrap().unwrap();
    assert_eq!(holder(&store).as_deref(), Some("operator-b"));

    // Someone else takes the lease (as after a partition): the old leader notices and stops.
    let lost = b.lost();
    {
        let mut s = store.lock().unwrap();
        let lease = s.objects.get_mut(LEASE).unwrap();
        lease["spec"]["holderIdentity"] = "operator-c".into();
        lease["spec"]["renewTime"] = lease["spec"]["acquireTime"].clone();
        lease["spec"]["leaseDurationSeconds"] = 3600.into();
    }
    tokio::time::timeout(Duration::from_secs(10), lost).await.expect("the lost lease is noticed");
}
