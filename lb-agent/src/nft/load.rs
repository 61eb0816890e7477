//! Learning the committed state from the agent's own table (`nft -j list table`), once at startup.
//!
//! Anything unexpected — a missing chain, a slot without its service, an element nft prints in a
//! form this code does not know — makes the table "inconsistent": the next sync rebuilds it in one
//! transaction (flows keep their conntrack NAT bindings, so established connections survive that).
//!
//! An affinity service's endpoints are read from the names of its per-endpoint chains (which hold
//! the endpoint and the timeout; see [`super::script::aff_endpoint_chain`]), each as one slot: the
//! first sync rewrites the service's chain when its weights were unequal, and keeps its sets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::script::{self, be_map, hairpin, svc_map, CHAINS, KINDS, MAPS, NO_ENDPOINTS, SLOT_RULES};
use super::Committed;
use crate::model::{Affinity, Family, ServiceKey};

/// What the listing says: `Ok(committed)` or `Err(reason)` when it cannot be trusted.
pub(super) fn parse(json: &str) -> Result<Committed, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("unreadable nft JSON: {e}"))?;
    let items = v.get("nftables").and_then(Value::as_array).ok_or("no `nftables` array")?;
    let mut chains: HashMap<String, usize> = HashMap::new();
    let mut maps: HashMap<String, &Value> = HashMap::new();
    let mut sets: HashMap<String, &Value> = HashMap::new();
    for item in items {
        if let Some(c) = item.get("chain") {
            chains.entry(str_of(c, "name")?).or_insert(0);
        } else if let Some(r) = item.get("rule") {
            *chains.entry(str_of(r, "chain")?).or_insert(0) += 1;
        } else if let Some(m) = item.get("map") {
            maps.insert(str_of(m, "name")?, m);
        } else if let Some(s) = item.get("set") {
            sets.insert(str_of(s, "name")?, s);
        }
    }
    for c in CHAINS {
        if chains.get(c).copied().unwrap_or(0) == 0 {
            return Err(format!("chain `{c}` is missing or empty"));
        }
    }
    for m in MAPS {
        if !maps.contains_key(m) {
            return Err(format!("map `{m}` is missing"));
        }
    }
    let mut slot_chains = BTreeSet::new();
    // Affinity objects by service id: the service chains, and each endpoint chain's endpoint id
    // and timeout.
    let mut aff_chains: BTreeSet<String> = BTreeSet::new();
    let mut aff_endpoints: BTreeMap<String, Vec<(String, String, u32)>> = BTreeMap::new();
    for (name, rules) in &chains {
        if let Some(m) = name.strip_prefix("slots_") {
            let m: usize = m.parse().map_err(|_| format!("unexpected chain `{name}`"))?;
            if *rules != SLOT_RULES {
                return Err(format!("chain `{name}` has {rules} rules, expected {SLOT_RULES}"));
            }
            slot_chains.insert(m);
        } else if let Some(id) = name.strip_prefix("aff_") {
            aff_chains.insert(id.to_string());
        } else if let Some(rest) = name.strip_prefix("ae_") {
            // <p><f>_<vip>_<port>_<ip>_<port>_<timeout>
            let parts: Vec<&str> = rest.split('_').collect();
            let [svc, vip, vport, ip, port, timeout] = parts.as_slice() else {
                return Err(format!("unexpected chain `{name}`"));
            };
            let timeout: u32 = timeout.parse().map_err(|_| format!("unexpected chain `{name}`"))?;
            if *rules != 2 {
                return Err(format!("chain `{name}` has {rules} rules, expected 2"));
            }
            let set = format!("as_{rest}");
            if !sets.contains_key(&set) {
                return Err(format!("set `{set}` is missing"));
            }
            aff_endpoints.entry(format!("{svc}_{vip}_{vport}")).or_default().push((ip.to_string(), port.to_string(), timeout));
        } else if !CHAINS.contains(&name.as_str()) {
            return Err(format!("unexpected chain `{name}`"));
        }
    }

    let mut services: BTreeMap<ServiceKey, (Vec<SocketAddr>, Option<Affinity>)> = BTreeMap::new();
    for (f, p) in KINDS {
        let mut slots: HashMap<(SocketAddr, usize), SocketAddr> = HashMap::new();
        for e in elems(maps[be_map(f, p)]) {
            let (k, v) = pair(e)?;
            let k = concat(k)?;
            let v = concat(v)?;
            if k.len() != 3 || v.len() != 2 {
                return Err("backend element of unexpected shape".into());
            }
            let slot = num(&k[2])? as usize;
            slots.insert((addr(f, &k[0], &k[1])?, slot), addr(f, &v[0], &v[1])?);
        }
        let mut used = 0;
        for e in elems(maps[svc_map(f, p)]) {
            let (k, v) = pair(e)?;
            let k = concat(k)?;
            if k.len() != 2 {
                return Err("service element of unexpected shape".into());
            }
            let key = ServiceKey { protocol: p, vip: addr(f, &k[0], &k[1])? };
            let target = v
                .get("goto")
                .and_then(|g| g.get("target"))
                .and_then(Value::as_str)
                .ok_or("service verdict is not a goto")?;
            if target == NO_ENDPOINTS {
                services.insert(key, (Vec::new(), None));
                continue;
            }
            if target == script::aff_chain(&key) {
                let id = script::service_id(&key);
                if !aff_chains.remove(&id) {
                    return Err(format!("chain `{target}` is missing"));
                }
                let eps = aff_endpoints.remove(&id).ok_or_else(|| format!("chain `{target}` has no endpoint chains"))?;
                let timeouts: BTreeSet<u32> = eps.iter().map(|e| e.2).collect();
                let [timeout_secs] = timeouts.into_iter().collect::<Vec<_>>()[..] else {
                    return Err(format!("endpoint chains of `{target}` disagree on the timeout"));
                };
                let mut list = eps
                    .iter()
                    .map(|(ip, port, _)| script::parse_addr_id(f, ip, port).ok_or_else(|| format!("bad endpoint chain of `{target}`")))
                    .collect::<Result<Vec<_>, _>>()?;
                list.sort();
                let rules = chains.get(target).copied().unwrap_or(0);
                if rules != list.len() + 1 {
                    return Err(format!("chain `{target}` has {rules} rules, expected {}", list.len() + 1));
                }
                services.insert(key, (list, Some(Affinity { timeout_secs })));
                continue;
            }
            let m = target
                .strip_prefix("slots_")
                .and_then(|m| m.parse::<usize>().ok())
                .ok_or_else(|| format!("service verdict goes to unexpected chain `{target}`"))?;
            if !slot_chains.contains(&m) {
                return Err(format!("chain `{target}` is missing"));
            }
            let list = (0..m)
                .map(|i| slots.get(&(key.vip, i)).copied().ok_or_else(|| format!("slot {i} of {} is missing", key.vip)))
                .collect::<Result<Vec<_>, _>>()?;
            used += m;
            services.insert(key, (list, None));
        }
        if used != slots.len() {
            return Err(format!("{} {} slots belong to no service", slots.len() - used, be_map(f, p)));
        }
    }
    if let Some(id) = aff_chains.iter().next().or(aff_endpoints.keys().next()) {
        return Err(format!("affinity objects of `{id}` belong to no service"));
    }
    let mut committed = Committed { slot_chains, ..Committed::default() };
    for (key, (slots, affinity)) in services {
        committed.insert(key, slots, affinity);
    }
    let mut found = BTreeSet::new();
    for f in [Family::V4, Family::V6] {
        let s = sets.get(hairpin(f)).ok_or_else(|| format!("set `{}` is missing", hairpin(f)))?;
        for e in elems(s) {
            let c = concat(e)?;
            if c.len() != 2 || c[0] != c[1] {
                return Err("hairpin element of unexpected shape".into());
            }
            found.insert(ip(f, &c[0])?);
        }
    }
    let expected: BTreeSet<IpAddr> = committed.hairpin.keys().copied().collect();
    if found != expected {
        return Err("hairpin sets do not match the slots".into());
    }
    Ok(committed)
}

fn str_of(v: &Value, key: &str) -> Result<String, String> {
    v.get(key).and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("object without `{key}`"))
}

fn elems(v: &Value) -> impl Iterator<Item = &Value> {
    v.get("elem").and_then(Value::as_array).into_iter().flatten().map(|e| {
        // Elements with timeouts or comments come wrapped as {"elem": {"val": …}}.
        e.get("elem").and_then(|x| x.get("val")).unwrap_or(e)
    })
}

fn pair(e: &Value) -> Result<(&Value, &Value), String> {
    match e.as_array().map(Vec::as_slice) {
        Some([k, v]) => Ok((k.get("elem").and_then(|x| x.get("val")).unwrap_or(k), v)),
        _ => Err("map element is not a [key, value] pair".into()),
    }
}

fn concat(v: &Value) -> Result<&Vec<Value>, String> {
    v.get("concat").and_then(Value::as_array).ok_or_else(|| "element is not a concatenation".to_string())
}

fn num(v: &Value) -> Result<u64, String> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| format!("`{v}` is not a number"))
}

fn ip(family: Family, v: &Value) -> Result<IpAddr, String> {
    v.as_str()
        .and_then(|s| s.parse::<IpAddr>().ok())
        .filter(|a| Family::of(*a) == family)
        .ok_or_else(|| format!("`{v}` is not an {family:?} address"))
}

fn addr(family: Family, i: &Value, p: &Value) -> Result<SocketAddr, String> {
    let port = u16::try_from(num(p)?).map_err(|_| format!("`{p}` is not a port"))?;
    Ok(SocketAddr::new(ip(family, i)?, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn listing(be_elems: &str, svc_target: &str, hairpin: &str) -> String {
        let chain = |name: &str, rules: usize| {
            let mut s = format!(r#"{{"chain": {{"family": "inet", "table": "t", "name": "{name}"}}}},"#);
            for _ in 0..rules {
                s.push_str(&format!(r#"{{"rule": {{"family": "inet", "table": "t", "chain": "{name}"}}}},"#));
            }
            s
        };
        let mut items = String::new();
        for c in CHAINS {
            items.push_str(&chain(c, 1));
        }
        items.push_str(&chain("slots_2", 4));
        format!(
            r#"{{"nftables": [{{"metainfo": {{}}}}, {items}
            {{"map": {{"name": "svc_tcp4", "elem": [[{{"concat": ["10.96.0.10", 80]}}, {{"goto": {{"target": "{svc_target}"}}}}]]}}}},
            {{"map": {{"name": "svc_udp4"}}}},
            {{"map": {{"name": "svc_tcp6", "elem": [[{{"concat": ["fd00:96::10", 80]}}, {{"goto": {{"target": "aff_t6_fd000096000000000000000000000010_0050"}}}}]]}}}},
            {{"map": {{"name": "svc_udp6"}}}},
            {{"map": {{"name": "be_tcp4", "elem": [{be_elems}]}}}},
            {{"map": {{"name": "be_udp4"}}}},
            {{"map": {{"name": "be_tcp6"}}}},
            {{"map": {{"name": "be_udp6"}}}},
            {{"chain": {{"name": "aff_t6_fd000096000000000000000000000010_0050"}}}},
            {{"rule": {{"chain": "aff_t6_fd000096000000000000000000000010_0050"}}}},
            {{"rule": {{"chain": "aff_t6_fd000096000000000000000000000010_0050"}}}},
            {{"chain": {{"name": "{AE}"}}}},
            {{"rule": {{"chain": "{AE}"}}}},
            {{"rule": {{"chain": "{AE}"}}}},
            {{"set": {{"name": "as{}"}}}},
            {{"set": {{"name": "hairpin4", "elem": [{hairpin}]}}}},
            {{"set": {{"name": "hairpin6", "elem": [{{"concat": ["fd00::1", "fd00::1"]}}]}}}}]}}"#,
            &AE[2..]
        )
    }

    /// The endpoint chain of fd00::1:8080 for [fd00:96::10]:80/tcp, timeout 60 s.
    const AE: &str = "ae_t6_fd000096000000000000000000000010_0050_fd000000000000000000000000000001_1f90_60";
    const TWO: &str = r#"[{"concat": ["10.96.0.10", 80, 0]}, {"concat": ["10.0.0.1", 8080]}], [{"concat": ["10.96.0.10", 80, 1]}, {"concat": ["10.0.0.2", 8080]}]"#;
    const PAIRS: &str = r#"{"concat": ["10.0.0.1", "10.0.0.1"]}, {"concat": ["10.0.0.2", "10.0.0.2"]}"#;

    #[test]
    fn reads_back_what_the_agent_writes() {
        let c = parse(&listing(TWO, "slots_2", PAIRS)).expect("consistent");
        let key = ServiceKey { protocol: Protocol::Tcp, vip: "10.96.0.10:80".parse().expect("addr") };
        let slots: Vec<String> = c.services[&key].slots.iter().map(ToString::to_string).collect();
        assert_eq!(slots, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        let six = ServiceKey { protocol: Protocol::Tcp, vip: "[fd00:96::10]:80".parse().expect("addr") };
        assert_eq!(c.services[&six].slots, vec!["[fd00::1]:8080".parse::<SocketAddr>().expect("addr")]);
        assert_eq!(c.services[&six].affinity, Some(Affinity { timeout_secs: 60 }));
        assert_eq!(c.objects(), 2 + 3 + 3);
    }

    #[test]
    fn anything_unexpected_is_inconsistent() {
        let one = r#"[{"concat": ["10.96.0.10", 80, 0]}, {"concat": ["10.0.0.1", 8080]}]"#;
        for (json, why) in [
            (listing(one, "slots_2", PAIRS), "slot 1 of 10.96.0.10:80 is missing"),
            (listing(TWO, "slots_2", r#"{"concat": ["10.0.0.1", "10.0.0.1"]}"#), "hairpin sets do not match"),
            (listing(TWO, "no_endpoints", PAIRS), "slots belong to no service"),
            (listing(TWO, "elsewhere", PAIRS), "unexpected chain `elsewhere`"),
            ("{}".to_string(), "no `nftables` array"),
        ] {
            let err = parse(&json).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
