//! The last relay state each Tasmota plug reported, for its next SENSOR readings.
//!
//! Bounded by two generations: new devices go into `current`; when `current` holds
//! half the capacity it becomes `previous` and the old `previous` is dropped. A device
//! whose state is updated while in `previous` moves back to `current` (its key moves,
//! nothing is allocated). So the cache never holds more than its capacity, and a
//! device's state is remembered at least until capacity / 2 other devices have been
//! added after its last STATE message. Each step is O(1), whatever the input.

use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub(crate) struct RelayCache {
    /// Devices per generation; 0 disables the cache.
    generation: usize,
    current: HashMap<Box<str>, bool>,
    previous: HashMap<Box<str>, bool>,
}

impl RelayCache {
    /// A cache for at most `capacity` devices (an odd capacity is rounded down; 0 or
    /// 1 remembers nothing).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            generation: capacity / 2,
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    pub(crate) fn get(&self, device_id: &str) -> Option<bool> {
        self.current
            .get(device_id)
            .or_else(|| self.previous.get(device_id))
            .copied()
    }

    pub(crate) fn set(&mut self, device_id: &str, on: bool) {
        if self.generation == 0 {
            return;
        }
        if let Some(state) = self.current.get_mut(device_id) {
            *state = on;
            return;
        }
        let key = match self.previous.remove_entry(device_id) {
            Some((key, _)) => key,
            None => device_id.into(),
        };
        if self.current.len() >= self.generation {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, on);
    }

    /// How many devices are remembered.
    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_updates() {
        let mut cache = RelayCache::new(8);
        assert_eq!(cache.get("a"), None);
        cache.set("a", true);
        assert_eq!(cache.get("a"), Some(true));
        cache.set("a", false);
        assert_eq!(cache.get("a"), Some(false));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn stays_within_capacity_and_keeps_recent_devices() {
        let mut cache = RelayCache::new(10);
        for i in 0..1_000_usize {
            cache.set(&format!("plug-{i}"), i % 2 == 0);
            assert!(cache.len() <= 10, "{} devices after {i}", cache.len());
            // The last capacity / 2 devices are always remembered.
            for j in i.saturating_sub(4)..=i {
                assert_eq!(cache.get(&format!("plug-{j}")), Some(j % 2 == 0), "{j}");
            }
        }
        assert_eq!(cache.get("plug-0"), None);
    }

    #[test]
    fn an_update_keeps_a_device_from_aging_out() {
        let mut cache = RelayCache::new(4);
        cache.set("kept", true);
        for i in 0..100 {
            cache.set(&format!("other-{i}"), false);
            cache.set("kept", i % 2 == 0);
        }
        assert_eq!(cache.get("kept"), Some(false));
        assert!(cache.len() <= 4);
    }

    #[test]
    fn capacity_below_two_remembers_nothing() {
        for capacity in [0, 1] {
            let mut cache = RelayCache::new(capacity);
            cache.set("a", true);
            assert_eq!(cache.get("a"), None);
            assert_eq!(cache.len(), 0);
        }
    }
}
