//! Turning C arguments into Rust values without trusting them.

use std::ffi::{c_char, CStr};

use crate::error::{lb_status, Error};

/// Borrows a NUL-terminated C string as UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and unmodified for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Error> {
    if ptr.is_null() {
        return Err(Error::null(name));
    }
    // SAFETY: non-NULL, and the caller guarantees a valid NUL-terminated string for 'a.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map_err(|e| {
        Error::new(
            lb_status::LB_ERR_INVALID_UTF8,
            format!("`{name}` is not valid UTF-8: {e}"),
        )
    })
}

/// Like [`str_arg`], but NULL (or an empty string) means "not given".
///
/// # Safety
/// As for [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(
    ptr: *const c_char,
    name: &str,
) -> Result<Option<&'a str>, Error> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    let s = unsafe { str_arg(ptr, name) }?;
    Ok(if s.trim().is_empty() { None } else { Some(s) })
}

/// Borrows `len` bytes; NULL with a zero length is "no bytes" (`None`).
///
/// # Safety
/// When non-NULL, `ptr` points to `len` readable bytes that stay valid for `'a`.
pub(crate) unsafe fn bytes_arg<'a>(
    ptr: *const u8,
    len: usize,
    name: &str,
) -> Result<Option<&'a [u8]>, Error> {
    if ptr.is_null() {
        if len == 0 {
            return Ok(None);
        }
        return Err(Error::null(name));
    }
    if len > isize::MAX as usize {
        return Err(Error::new(
            lb_status::LB_ERR_INVALID_ARGUMENT,
            format!("`{name}` length {len} is too large"),
        ));
    }
    // SAFETY: non-NULL, length bounded by isize::MAX, and the caller guarantees `len` readable bytes.
    Ok(Some(unsafe { std::slice::from_raw_parts(ptr, len) }))
}

/// Copies `src` into a fixed C buffer, always NUL-terminated, cutting at a UTF-8 boundary when it
/// does not fit. Returns whether it fitted.
pub(crate) fn copy_to_buf(dst: &mut [c_char], src: &str) -> bool {
    let Some(room) = dst.len().checked_sub(1) else {
        return src.is_empty();
    };
    let mut n = src.len().min(room);
    while !src.is_char_boundary(n) {
        n -= 1;
    }
    for (d, s) in dst.iter_mut().zip(&src.as_bytes()[..n]) {
        *d = *s as c_char;
    }
    dst[n] = 0;
    n == src.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_truncates_on_char_boundary_and_terminates() {
        let mut buf = [1 as c_char; 4];
        assert!(!copy_to_buf(&mut buf, "aéb"));
        // "aé" is 3 bytes, the room is 3: it fits exactly, 'b' is cut.
        assert_eq!(
            &buf[..4],
            &[b'a' as c_char, 0xc3u8 as c_char, 0xa9u8 as c_char, 0]
        );
        let mut buf = [1 as c_char; 3];
        assert!(!copy_to_buf(&mut buf, "aé"));
        assert_eq!(
            &buf[..2],
            &[b'a' as c_char, 0],
            "a half character is never written"
        );
        assert!(copy_to_buf(&mut buf, "ok"));
    }
}
