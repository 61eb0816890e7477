//! Heap accounting: the bytes live on the heap now and at the peak, so the cost-growth scenario
//! can say how much memory each simulated client and each connection takes.
//!
//! The `cap` crate's allocator wraps the system one and counts every allocation with a relaxed
//! atomic; lb-sim installs it as its global allocator (`lb-report`'s measurements never pay for
//! it). Its limit is left at `usize::MAX`: it counts, it never refuses.

use std::alloc::System;

use cap::Cap;

/// The global allocator of the `lb-sim` binary.
pub(crate) type Counting = Cap<System>;

/// A counting allocator that never refuses.
pub(crate) const fn counting() -> Counting {
    Cap::new(System, usize::MAX)
}

/// Heap bytes live now.
pub(crate) fn live() -> usize {
    crate::ALLOC.allocated()
}

/// The most heap bytes live at once so far.
pub(crate) fn peak() -> usize {
    crate::ALLOC.max_allocated()
}
