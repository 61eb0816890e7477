//! The watcher-event → update translation, event by event (no HTTP).

use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lb_core::{EndpointSet, Locality};

use super::*;
use crate::kubernetes::slices::{Options, PortSpec};

fn watch() -> Watch {
    let inner = Arc::new(Inner {
        client: None,
        caller: Locality::unknown(),
        opts: Options::default(),
        backoff: None,
    });
    let svc = ServiceRef {
        name: "greeter".into(),
        namespace: Some("default".into()),
        port: PortSpec::Named("grpc".into()),
    };
    let view = View::new(svc.port.clone(), inner.opts.clone());
    Watch {
        inner,
        svc,
        events: None,
        namespace: "default".into(),
        client_retry: None,
        view,
        relist: None,
        listed: false,
        pending: VecDeque::new(),
    }
}

fn slice(name: &str, ips: &[&str]) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: Some(
            ips.iter()
                .map(|ip| SliceEndpoint {
                    addresses: vec![ip.to_string()],
                    ..Default::default()
                })
                .collect(),
        ),
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ports: Some(vec![EndpointPort {
            name: Some("grpc".into()),
            port: Some(80),
            ..Default::default()
        }]),
    }
}

fn drain(w: &mut Watch) -> Vec<Update> {
    w.pending.drain(..).collect()
}

fn addrs(set: &EndpointSet) -> Vec<String> {
    set.iter().map(|e| e.addr().ip().to_string()).collect()
}

#[test]
fn a_list_is_one_reset_and_watch_events_are_diffs() {
    let mut w = watch();
    w.on_event(Event::Init);
    w.on_event(Event::InitApply(slice("a", &["10.0.0.1", "10.0.0.2"])));
    w.on_event(Event::InitApply(slice("b", &["10.0.0.3"])));
    assert!(w.pending.is_empty(), "nothing before the list completes");
    w.on_event(Event::InitDone);
    let mut set = EndpointSet::new();
    let updates = drain(&mut w);
    assert_eq!(updates.len(), 1);
    assert!(matches!(updates[0], Update::Reset(ref eps) if eps.len() == 3));
    for u in updates {
        set.apply(u);
    }

    // 10.0.0.2 replaced by 10.0.0.4 in one slice event: an Add, then a Remove.
    w.on_event(Event::Apply(slice("a", &["10.0.0.1", "10.0.0.4"])));
    let updates = drain(&mut w);
    assert!(matches!(updates.as_slice(), [Update::Add(a), Update::Remove(r)] if a.len() == 1 && r.len() == 1), "{updates:?}");
    for u in updates {
        set.apply(u);
    }
    assert_eq!(addrs(&set), ["10.0.0.1", "10.0.0.3", "10.0.0.4"]);

    // An event that changes nothing for this port emits nothing.
    w.on_event(Event::Apply(slice("a", &["10.0.0.1", "10.0.0.4"])));
    assert!(w.pending.is_empty());

    w.on_event(Event::Delete(slice("b", &[])));
    for u in drain(&mut w) {
        set.apply(u);
    }
    assert_eq!(addrs(&set), ["10.0.0.1", "10.0.0.4"]);
}

#[test]
fn an_unfinished_relist_changes_nothing_and_a_finished_one_is_a_diffable_reset() {
    let mut w = watch();
    w.on_event(Event::Init);
    w.on_event(Event::InitApply(slice("a", &["10.0.0.1", "10.0.0.2"])));
    w.on_event(Event::InitDone);
    let mut set = EndpointSet::new();
    for u in drain(&mut w) {
        set.apply(u);
    }

    // A relist that fails after one page (the watcher restarts with Init): nothing emitted, and
    // the view it would diff against is untouched.
    w.on_event(Event::Init);
    w.on_event(Event::InitApply(slice("a", &["10.0.0.9"])));
    w.on_event(Event::Init);
    assert!(w.pending.is_empty());
    assert_eq!(w.view.endpoints().len(), 2);

    // The retry completes with the same content: the set is confirmed, and changes nothing.
    w.on_event(Event::InitApply(slice("a", &["10.0.0.1", "10.0.0.2"])));
    w.on_event(Event::InitDone);
    let updates = drain(&mut w);
    assert_eq!(updates, vec![Update::Current]);
    assert!(set.apply(Update::Current).is_empty());

    // A relist with other content is a Reset, diffed against what is served.
    w.on_event(Event::Init);
    w.on_event(Event::InitApply(slice("a", &["10.0.0.1", "10.0.0.3"])));
    w.on_event(Event::InitDone);
    let updates = drain(&mut w);
    assert_eq!(updates.len(), 1);
    let diff = set.apply(updates.into_iter().next().expect("one update"));
    assert_eq!((diff.added.len(), diff.removed.len(), diff.changed.len()), (1, 1, 0), "{diff:?}");
}
