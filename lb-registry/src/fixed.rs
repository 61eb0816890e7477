//! Static endpoint lists: `static:///addr[;key=value…][,addr…]`.
//!
//! Each entry is a socket address optionally followed by `;`-separated attributes:
//! `weight`, `zone`, `region`, `node`, `id`, `state` (`ready`, `serving`, `terminating`), e.g.
//! `static:///10.0.0.1:80;zone=a;weight=200,10.0.0.2:80;zone=b`. Any other key becomes metadata.
//! A static list is a registry too: the whole list is validated up front and a bad entry is an
//! error that names it, since there is no later update to correct it.

use lb_core::{Endpoint, EndpointState, Locality};

use crate::Error;

/// Parses a static list into endpoints.
pub fn parse_list(list: &str) -> Result<Vec<Endpoint>, Error> {
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        out.push(parse_entry(entry)?);
    }
    if out.is_empty() {
        return Err(Error::invalid_target("a static target needs at least one address, e.g. static:///127.0.0.1:50051"));
    }
    Ok(out)
}

fn parse_entry(entry: &str) -> Result<Endpoint, Error> {
    let mut parts = entry.split(';');
    let addr_str = parts.next().unwrap_or_default().trim();
    let addr = addr_str
        .parse()
        .map_err(|_| {
            let hint = if addr_str.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
                format!("; for a host name use dns:///{addr_str}")
            } else {
                String::new()
            };
            Error::invalid_target(format!("`{addr_str}` is not a socket address (expected ip:port{hint})"))
        })?;
    let mut ep = Endpoint::new(addr);
    let mut locality = Locality::unknown();
    for attr in parts {
        let (k, v) = attr
            .split_once('=')
            .ok_or_else(|| Error::invalid_target(format!("attribute `{attr}` of `{entry}` is not key=value")))?;
        let (k, v) = (k.trim(), v.trim());
        match k {
            "weight" => {
                let w = v
                    .parse()
                    .map_err(|_| Error::invalid_target(format!("weight `{v}` of `{entry}` is not a non-negative integer")))?;
                ep = ep.with_weight(w);
            }
            "zone" => locality = locality.with_zone(v),
            "region" => locality = locality.with_region(v),
            "node" => locality = locality.with_node(v),
            "id" => ep = ep.with_id(v),
            "state" => {
                let s = match v {
                    "ready" => EndpointState::Ready,
                    "serving" => EndpointState::Serving,
                    "terminating" => EndpointState::Terminating,
                    _ => return Err(Error::invalid_target(format!("state `{v}` of `{entry}` is not ready, serving or terminating"))),
                };
                ep = ep.with_state(s);
            }
            _ => ep = ep.with_metadata(k, v),
        }
    }
    Ok(ep.with_locality(locality))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes() {
        let eps = parse_list("127.0.0.1:1;zone=a;weight=200;node=n1;color=blue, [::1]:2").expect("valid");
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].weight(), 200);
        assert_eq!(eps[0].locality().zone.as_deref(), Some("a"));
        assert_eq!(eps[0].metadata().get("color").map(String::as_str), Some("blue"));
        assert_eq!(eps[1].addr().port(), 2);
    }

    #[test]
    fn bad_entries_are_named() {
        let err = parse_list("127.0.0.1:1,nonsense").expect_err("bad address");
        assert!(err.to_string().contains("nonsense"), "{err}");
        assert!(parse_list("127.0.0.1:1;weight=-3").is_err());
        assert!(parse_list("").is_err());
        let named = parse_list("greeter.default.svc:50051").expect_err("a host name");
        assert!(named.to_string().contains("use dns:///greeter.default.svc:50051"), "{named}");
        assert!(!err.to_string().contains("dns:///"), "no hint without a port: {err}");
    }
}
