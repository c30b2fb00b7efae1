//! Which workers have joined the run, under which names, and which of them
//! hold a session. Pure: the service asks it, the network never touches it.

use std::collections::BTreeMap;

use crate::round::WorkerId;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("unknown worker id {0}: call Join first")]
    Unknown(WorkerId),
    #[error("worker id {0} already has an open session")]
    AlreadyAttached(WorkerId),
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    attached: bool,
}

/// Ids are handed out once and never reused, so a message from a worker's
/// earlier life can never be taken for another worker's.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: WorkerId,
    workers: BTreeMap<WorkerId, Entry>,
}

impl Registry {
    /// Registers a worker and returns its new id.
    pub fn join(&mut self, name: &str) -> WorkerId {
        self.next_id += 1;
        let id = self.next_id;
        self.workers.insert(id, Entry { name: name.to_owned(), attached: false });
        id
    }

    /// Marks `id`'s session open; returns the worker's name.
    pub fn attach(&mut self, id: WorkerId) -> Result<String, RegistryError> {
        let entry = self.workers.get_mut(&id).ok_or(RegistryError::Unknown(id))?;
        if entry.attached {
            return Err(RegistryError::AlreadyAttached(id));
        }
        entry.attached = true;
        Ok(entry.name.clone())
    }

    /// Marks `id`'s session closed; it may attach again after a new Join.
    pub fn detach(&mut self, id: WorkerId) {
        self.workers.remove(&id);
    }

    pub fn is_known(&self, id: WorkerId) -> bool {
        self.workers.contains_key(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_sessions_exclusive() {
        let mut r = Registry::default();
        let a = r.join("a");
        let b = r.join("a");
        assert_ne!(a, b);
        assert_eq!(r.attach(a).unwrap(), "a");
        assert_eq!(r.attach(a), Err(RegistryError::AlreadyAttached(a)));
        assert_eq!(r.attach(99), Err(RegistryError::Unknown(99)));
        r.detach(a);
        assert_eq!(r.attach(a), Err(RegistryError::Unknown(a)));
        assert!(r.join("c") > b);
    }
}
