//! Learning the committed state from the agent's own table (`nft -j list table`), once at startup.
//!
//! Anything unexpected — a missing chain, a slot without its service, an element nft prints in a
//! form this code does not know — makes the table "inconsistent": the next sync rebuilds it in one
//! transaction (flows keep their conntrack NAT bindings, so established connections survive that).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use serde_json::Value;

use super::script::{be_map, svc_map, CHAINS, HAIRPIN, MAPS, NO_ENDPOINTS};
use super::Committed;
use crate::model::{Protocol, ServiceKey};

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
    for (name, rules) in &chains {
        if let Some(m) = name.strip_prefix("slots_") {
            let m: usize = m.parse().map_err(|_| format!("unexpected chain `{name}`"))?;
            if *rules != 2 {
                return Err(format!("chain `{name}` has {rules} rules, expected 2"));
            }
            slot_chains.insert(m);
        } else if !CHAINS.contains(&name.as_str()) {
            return Err(format!("unexpected chain `{name}`"));
        }
    }

    let mut services = BTreeMap::new();
    for p in [Protocol::Tcp, Protocol::Udp] {
        let mut slots: HashMap<(SocketAddrV4, usize), SocketAddrV4> = HashMap::new();
        for e in elems(maps[be_map(p)]) {
            let (k, v) = pair(e)?;
            let k = concat(k)?;
            let v = concat(v)?;
            if k.len() != 3 || v.len() != 2 {
                return Err("backend element of unexpected shape".into());
            }
            let slot = num(&k[2])? as usize;
            slots.insert((addr(&k[0], &k[1])?, slot), addr(&v[0], &v[1])?);
        }
        let mut used = 0;
        for e in elems(maps[svc_map(p)]) {
            let (k, v) = pair(e)?;
            let k = concat(k)?;
            if k.len() != 2 {
                return Err("service element of unexpected shape".into());
            }
            let vip = addr(&k[0], &k[1])?;
            let target = v
                .get("goto")
                .and_then(|g| g.get("target"))
                .and_then(Value::as_str)
                .ok_or("service verdict is not a goto")?;
            let m = if target == NO_ENDPOINTS {
                0
            } else {
                let m = target
                    .strip_prefix("slots_")
                    .and_then(|m| m.parse::<usize>().ok())
                    .ok_or_else(|| format!("service verdict goes to unexpected chain `{target}`"))?;
                if !slot_chains.contains(&m) {
                    return Err(format!("chain `{target}` is missing"));
                }
                m
            };
            let list = (0..m)
                .map(|i| slots.get(&(vip, i)).copied().ok_or_else(|| format!("slot {i} of {vip} is missing")))
                .collect::<Result<Vec<_>, _>>()?;
            used += m;
            services.insert(ServiceKey { protocol: p, vip }, list);
        }
        if used != slots.len() {
            return Err(format!("{} {} slots belong to no service", slots.len() - used, p.as_str()));
        }
    }
    let mut committed = Committed { slot_chains, ..Committed::default() };
    for (key, slots) in services {
        committed.insert(key, slots);
    }
    let mut hairpin = BTreeSet::new();
    if let Some(s) = sets.get(HAIRPIN) {
        for e in elems(s) {
            let c = concat(e)?;
            if c.len() != 2 || c[0] != c[1] {
                return Err("hairpin element of unexpected shape".into());
            }
            hairpin.insert(ip(&c[0])?);
        }
    } else {
        return Err(format!("set `{HAIRPIN}` is missing"));
    }
    let expected: BTreeSet<Ipv4Addr> = committed.hairpin.keys().copied().collect();
    if hairpin != expected {
        return Err("hairpin set does not match the slots".into());
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

fn ip(v: &Value) -> Result<Ipv4Addr, String> {
    v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| format!("`{v}` is not an IPv4 address"))
}

fn addr(i: &Value, p: &Value) -> Result<SocketAddrV4, String> {
    let port = u16::try_from(num(p)?).map_err(|_| format!("`{p}` is not a port"))?;
    Ok(SocketAddrV4::new(ip(i)?, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(be_elems: &str, svc_target: &str, hairpin: &str) -> String {
        let chain = |name: &str, rules: usize| {
            let mut s = format!(r#"{{"chain": {{"family": "ip", "table": "t", "name": "{name}"}}}},"#);
            for _ in 0..rules {
                s.push_str(&format!(r#"{{"rule": {{"family": "ip", "table": "t", "chain": "{name}"}}}},"#));
            }
            s
        };
        let mut items = String::new();
        for c in CHAINS {
            items.push_str(&chain(c, 1));
        }
        items.push_str(&chain("slots_2", 2));
        format!(
            r#"{{"nftables": [{{"metainfo": {{}}}}, {items}
            {{"map": {{"name": "svc_tcp", "elem": [[{{"concat": ["10.96.0.10", 80]}}, {{"goto": {{"target": "{svc_target}"}}}}]]}}}},
            {{"map": {{"name": "svc_udp"}}}},
            {{"map": {{"name": "be_tcp", "elem": [{be_elems}]}}}},
            {{"map": {{"name": "be_udp"}}}},
            {{"set": {{"name": "hairpin", "elem": [{hairpin}]}}}}]}}"#
        )
    }

    const TWO: &str = r#"[{"concat": ["10.96.0.10", 80, 0]}, {"concat": ["10.0.0.1", 8080]}], [{"concat": ["10.96.0.10", 80, 1]}, {"concat": ["10.0.0.2", 8080]}]"#;
    const PAIRS: &str = r#"{"concat": ["10.0.0.1", "10.0.0.1"]}, {"concat": ["10.0.0.2", "10.0.0.2"]}"#;

    #[test]
    fn reads_back_what_the_agent_writes() {
        let c = parse(&listing(TWO, "slots_2", PAIRS)).expect("consistent");
        let key = ServiceKey { protocol: Protocol::Tcp, vip: "10.96.0.10:80".parse().expect("addr") };
        let slots: Vec<String> = c.services[&key].slots.iter().map(ToString::to_string).collect();
        assert_eq!(slots, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(c.objects(), 1 + 2 + 2);
    }

    #[test]
    fn anything_unexpected_is_inconsistent() {
        let one = r#"[{"concat": ["10.96.0.10", 80, 0]}, {"concat": ["10.0.0.1", 8080]}]"#;
        for (json, why) in [
            (listing(one, "slots_2", PAIRS), "slot 1 of 10.96.0.10:80 is missing"),
            (listing(TWO, "slots_2", r#"{"concat": ["10.0.0.1", "10.0.0.1"]}"#), "hairpin set does not match"),
            (listing(TWO, "no_endpoints", PAIRS), "slots belong to no service"),
            (listing(TWO, "elsewhere", PAIRS), "unexpected chain `elsewhere`"),
            ("{}".to_string(), "no `nftables` array"),
        ] {
            let err = parse(&json).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
