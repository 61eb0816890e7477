//! `lb_registration_*`: keep a server written in another language listed in a registry.

use std::ffi::c_char;
use std::fmt;
use std::time::Duration;

use lb_registry::{Registration, Target};
use tokio::runtime::Runtime;

use crate::balancer::runtime;
use crate::error::{guard, guard_void, lb_status, Error};
use crate::options::Instance;
use crate::ptr::str_arg;

/// How long `lb_registration_new` waits for the first registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `lb_registration_free` waits for the registry to confirm the deregistration.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// A live registration: the instance stays listed (heartbeats, re-registration after registry
/// outages) until `lb_registration_free`. Opaque.
#[allow(non_camel_case_types)]
pub struct lb_registration {
    registration: Option<Registration>,
    runtime: Option<Runtime>,
}

impl fmt::Debug for lb_registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("lb_registration")
            .field("registration", &self.registration)
            .finish()
    }
}

impl Drop for lb_registration {
    fn drop(&mut self) {
        let Some(rt) = self.runtime.take() else {
            return;
        };
        if let Some(reg) = self.registration.take() {
            // The timer must be created inside the runtime, hence the async block.
            let _ = rt.block_on(async {
                tokio::time::timeout(DEREGISTER_TIMEOUT, reg.deregister()).await
            });
        }
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}

/// Registers an instance in the registry `target` names (`etcd://host:port/service`,
/// `consul://host:port/service`; `static` and `kubernetes` targets cannot register) and keeps it
/// registered from background threads.
///
/// - `instance_json`: `{"addr": "10.0.0.5:8080"` (required) `, "id", "weight", "region", "zone",
///   "node", "state": "ready"|"serving"|"terminating", "metadata": {"key": "value"}}`.
/// - `out`: receives the registration on `LB_OK`.
///
/// Blocks until the first registration succeeded or failed (at most 30 s, then `LB_ERR_TIMEOUT`).
/// Errors: `LB_ERR_NULL_ARGUMENT`, `LB_ERR_INVALID_UTF8`, `LB_ERR_INVALID_TARGET`,
/// `LB_ERR_UNSUPPORTED_SCHEME`, `LB_ERR_INVALID_OPTIONS`, `LB_ERR_REGISTRY`, `LB_ERR_TIMEOUT`.
///
/// # Safety
/// `target` and `instance_json` are NULL or NUL-terminated strings; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lb_registration_new(
    target: *const c_char,
    instance_json: *const c_char,
    out: *mut *mut lb_registration,
) -> lb_status {
    guard(|| {
        if out.is_null() {
            return Err(Error::null("out"));
        }
        // SAFETY: the caller passes NULL or NUL-terminated strings valid for this call.
        let target = unsafe { str_arg(target, "target") }?;
        // SAFETY: as above.
        let instance = unsafe { str_arg(instance_json, "instance_json") }?;
        let target = Target::parse(target).map_err(Error::registry)?;
        let instance = Instance::parse(instance)?;
        let rt = runtime("lb-registration")?;
        let registration = rt
            .block_on(async {
                tokio::time::timeout(REGISTER_TIMEOUT, lb_registry::register(&target, instance))
                    .await
            })
            .map_err(|_| {
                Error::new(
                    lb_status::LB_ERR_TIMEOUT,
                    format!("registering in `{target}` took longer than {REGISTER_TIMEOUT:?}"),
                )
            })?
            .map_err(Error::registry)?;
        let reg = Box::new(lb_registration {
            registration: Some(registration),
            runtime: Some(rt),
        });
        // SAFETY: `out` is non-NULL and writable; ownership passes to the caller.
        unsafe { out.write(Box::into_raw(reg)) };
        Ok(())
    })
}

/// Deregisters the instance (waiting up to 5 s for the registry to confirm), stops the heartbeats
/// and frees `r`. NULL is a no-op. No other thread may use `r` during or after this call.
///
/// # Safety
/// `r` is NULL or a pointer from `lb_registration_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn lb_registration_free(r: *mut lb_registration) {
    guard_void(|| {
        if !r.is_null() {
            // SAFETY: `r` came from `Box::into_raw` in `lb_registration_new` and is freed only once.
            drop(unsafe { Box::from_raw(r) });
        }
    })
}
