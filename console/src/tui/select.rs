//! A selection that follows its item.
//!
//! No I/O. Lists in the console change under the cursor (events add and remove routes, rules
//! and connections; sorting reorders them), so the selection is kept by key, not by index: after
//! any change it points at the same item wherever that moved. Only when the item is gone does
//! the position count, and the row now at that position (or the last one) takes over.
//! Invariant after [`Selection::follow`]: the index is within the list, and the key is the key
//! of the row at the index (both empty for an empty list).

/// The selected row of a list, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    key: Option<String>,
    idx: usize,
    /// An item that is about to appear (a route being added): selected as soon as it does.
    want: Option<String>,
}

impl Selection {
    /// The selected item's key.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The selected row, as of the last `follow`.
    pub fn index(&self) -> usize {
        self.idx
    }

    /// Selects the item with `key` (found on the next `follow`).
    pub fn set(&mut self, key: impl Into<String>) {
        self.key = Some(key.into());
    }

    /// Selects the item with `key` once it is in the list, which may take a while (the daemon
    /// reports a new route after it answered); moving the selection gives up on it.
    pub fn expect(&mut self, key: impl Into<String>) {
        self.want = Some(key.into());
    }

    /// Re-finds the selected item among `keys` (the list as shown, in order).
    pub fn follow<S: AsRef<str>>(&mut self, keys: &[S]) {
        if let Some(want) = &self.want
            && keys.iter().any(|k| k.as_ref() == want)
        {
            self.key = self.want.take();
        }
        if keys.is_empty() {
            self.key = None;
            self.idx = 0;
            return;
        }
        if let Some(i) = self
            .key
            .as_deref()
            .and_then(|k| keys.iter().position(|x| x.as_ref() == k))
        {
            self.idx = i;
        } else {
            self.idx = self.idx.min(keys.len() - 1);
            self.key = Some(keys[self.idx].as_ref().to_owned());
        }
    }

    /// Moves by `delta` rows within `keys`, stopping at the ends.
    pub fn step<S: AsRef<str>>(&mut self, keys: &[S], delta: isize) {
        self.want = None;
        self.follow(keys);
        if keys.is_empty() {
            return;
        }
        let last = keys.len() as isize - 1;
        self.idx = (self.idx as isize + delta).clamp(0, last) as usize;
        self.key = Some(keys[self.idx].as_ref().to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_item_through_inserts_and_removals() {
        let mut s = Selection::default();
        s.follow(&["b", "c"]);
        assert_eq!((s.key(), s.index()), (Some("b"), 0));
        s.step(&["b", "c"], 1);
        assert_eq!(s.key(), Some("c"));
        s.follow(&["a", "b", "c"]); // inserted before
        assert_eq!((s.key(), s.index()), (Some("c"), 2));
        s.follow(&["c", "a"]); // reordered
        assert_eq!(s.index(), 0);
        s.follow(&["a", "d"]); // gone: the row at its position takes over
        assert_eq!((s.key(), s.index()), (Some("a"), 0));
        s.step(&["a", "d"], 5);
        assert_eq!(s.key(), Some("d"));
        s.follow(&["a"]);
        assert_eq!((s.key(), s.index()), (Some("a"), 0));
        s.follow::<&str>(&[]);
        assert_eq!(s.key(), None);
        // An expected item is selected when it shows up, not before.
        s.follow(&["a", "b"]);
        s.expect("new");
        s.follow(&["a", "b"]);
        assert_eq!(s.key(), Some("a"));
        s.follow(&["a", "b", "new"]);
        assert_eq!((s.key(), s.index()), (Some("new"), 2));
    }
}
