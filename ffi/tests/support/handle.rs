//! Safe wrappers over the C ABI for tests, calling the exported functions exactly as C would.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use lb_ffi::*;

pub fn last_error() -> String {
    let mut buf = [0 as c_char; 512];
    // SAFETY: `buf` is 512 writable bytes.
    unsafe { lb_last_error_message(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: lb_last_error_message always NUL-terminates within `buf`.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// An owned balancer for tests: freed on drop.
pub struct Bal(pub *mut lb_balancer);

// SAFETY: the ABI documents every function but `lb_balancer_free` as callable from any thread.
unsafe impl Send for Bal {}
// SAFETY: as above.
unsafe impl Sync for Bal {}

impl Bal {
    pub fn new(target: &str, options: &str) -> Result<Bal, (lb_status, String)> {
        let t = CString::new(target).expect("no NUL in the target");
        let o = CString::new(options).expect("no NUL in the options");
        let mut out = ptr::null_mut();
        // SAFETY: valid C strings and a writable out-pointer.
        let s = unsafe { lb_balancer_new(t.as_ptr(), o.as_ptr(), &mut out) };
        if s == lb_status::LB_OK {
            Ok(Bal(out))
        } else {
            assert!(out.is_null(), "a failed new leaves *out untouched");
            Err((s, last_error()))
        }
    }

    pub fn ready(&self, ms: u64) -> lb_status {
        // SAFETY: a live balancer.
        unsafe { lb_balancer_wait_ready(self.0, ms) }
    }

    pub fn pick(&self, key: Option<&[u8]>) -> Result<lb_pick, lb_status> {
        let mut p = std::mem::MaybeUninit::<lb_pick>::uninit();
        let (k, n) = key.map_or((ptr::null(), 0), |k| (k.as_ptr(), k.len()));
        // SAFETY: a live balancer, `n` readable key bytes, a writable lb_pick.
        let s = unsafe { lb_balancer_pick(self.0, k, n, p.as_mut_ptr()) };
        if s == lb_status::LB_OK {
            // SAFETY: LB_OK means `*out` was written.
            Ok(unsafe { p.assume_init() })
        } else {
            Err(s)
        }
    }

    pub fn report(&self, token: u64, outcome: i32, latency_us: i64) -> lb_status {
        // SAFETY: a live balancer.
        unsafe { lb_balancer_report(self.0, token, outcome, latency_us) }
    }

    pub fn report_load(&self, token: u64, outcome: i32, report: &[u8]) -> lb_status {
        // SAFETY: a live balancer and `report.len()` readable bytes.
        unsafe { lb_balancer_report_load(self.0, token, outcome, -1, report.as_ptr(), report.len()) }
    }

    pub fn endpoints(&self) -> serde_json::Value {
        let mut out = ptr::null_mut();
        // SAFETY: a live balancer and a writable out-pointer.
        assert_eq!(
            unsafe { lb_balancer_endpoints(self.0, &mut out) },
            lb_status::LB_OK
        );
        // SAFETY: LB_OK means `out` is a NUL-terminated string from the library.
        let json = unsafe { CStr::from_ptr(out) }
            .to_str()
            .expect("UTF-8")
            .to_string();
        // SAFETY: the string came from lb_balancer_endpoints and is freed once.
        unsafe { lb_string_free(out) };
        serde_json::from_str(&json).expect("valid JSON")
    }
}

impl Drop for Bal {
    fn drop(&mut self) {
        // SAFETY: created by lb_balancer_new, freed once, no other user left.
        unsafe { lb_balancer_free(self.0) };
    }
}

pub fn addr(p: &lb_pick) -> String {
    // SAFETY: the library NUL-terminates every string field.
    unsafe { CStr::from_ptr(p.addr.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
