//! [`Padded`]: a value alone on its cache lines.

use std::ops::Deref;

/// A value alone on its cache lines (two 64-byte lines: some processors
/// fetch lines in pairs), so that threads writing neighbouring values, for
/// instance the lock words of neighbouring shards, do not take a line from
/// each other on every write.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
