//! Static endpoint lists: `static:///addr[;key=value…][,addr…]`.
//!
//! Each entry is a socket address optionally followed by `;`-separated attributes, the fields of
//! the [endpoint document](crate::document): `weight`, `zone`, `region`, `node`, `id`, `state`
//! (`ready`, `serving`, `terminating`), e.g.
//! `static:///10.0.0.1:80;zone=a;weight=200,10.0.0.2:80;zone=b`. Any other key becomes metadata.
//! A static list is a registry too: the whole list is validated up front and a bad entry is an
//! error that names it, since there is no later update to correct it.
//!
//! A static target takes no query option. In particular it has no [cache](crate::cache): the list
//! cannot become unreachable, so `snapshot`, `resync` and `allow_empty` would mean nothing, and they
//! are refused rather than ignored.

use lb_core::discover::BoxDiscover;
use lb_core::Endpoint;

use crate::document::EndpointDocument;
use crate::{scheme, Error, Target};

/// `static:///…`: the list, fixed. Takes no query option (and no cache: there is no registry to
/// lose).
pub(crate) fn resolve(target: &Target) -> Result<BoxDiscover, Error> {
    scheme::STATIC.check(target)?;
    Ok(lb_core::discover::fixed(parse_list(target.path())?))
}

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

/// An entry is the endpoint document's fields written `addr;key=value…`, metadata for any other key.
fn parse_entry(entry: &str) -> Result<Endpoint, Error> {
    let mut parts = entry.split(';');
    let mut doc = EndpointDocument {
        addr: parts.next().unwrap_or_default().trim().to_string(),
        ..EndpointDocument::default()
    };
    for attr in parts {
        let (k, v) = attr
            .split_once('=')
            .ok_or_else(|| Error::invalid_target(format!("attribute `{attr}` of `{entry}` is not key=value")))?;
        let (k, v) = (k.trim(), v.trim().to_string());
        match k {
            "weight" => {
                let w = v
                    .parse()
                    .map_err(|_| Error::invalid_target(format!("weight `{v}` of `{entry}` is not a non-negative integer")))?;
                doc.weight = Some(w);
            }
            "zone" => doc.zone = Some(v),
            "region" => doc.region = Some(v),
            "node" => doc.node = Some(v),
            "id" => doc.id = Some(v),
            "state" => doc.state = Some(v),
            _ => {
                doc.metadata.insert(k.to_string(), v);
            }
        }
    }
    let addr = doc.addr.clone();
    doc.into_endpoint().map_err(|e| {
        if !e.is_address() {
            return Error::invalid_target(format!("{e}, in `{entry}`"));
        }
        let hint = if addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
            format!("; for a host name use dns:///{addr}")
        } else {
            String::new()
        };
        Error::invalid_target(format!("`{addr}` is not a socket address (expected ip:port{hint})"))
    })
}

#[cfg(test)]
mod tests {
    use lb_core::EndpointState;

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
        let state = parse_list("127.0.0.1:1;state=gone").expect_err("a bad state");
        assert!(state.to_string().contains("`gone`") && state.to_string().contains("127.0.0.1:1;state=gone"), "{state}");
        let t = Target::parse("static:///127.0.0.1:1?snapshot=/tmp/x").expect("parses");
        assert!(resolve(&t).err().expect("no cache for a static list").to_string().contains("snapshot"));
    }

    #[test]
    fn states_parse() {
        let eps = parse_list("127.0.0.1:1;state=serving,127.0.0.1:2;state=terminating").expect("valid");
        assert_eq!(eps.iter().map(|e| e.state()).collect::<Vec<_>>(), [EndpointState::Serving, EndpointState::Terminating]);
    }
}
