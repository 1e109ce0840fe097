//! Interned application ids and each application's client sets.
//!
//! Every client belongs to one *group*: its application and whether it is
//! restricted, numbered `app << 1 | restricted`. Keeping restricted clients
//! in their own sets makes the restricted filter free: a query that skips
//! restricted clients simply never looks at the odd groups. Groups of one
//! application are adjacent numbers, which the value index exploits.

use std::collections::HashMap;
use std::sync::Arc;

use super::client_set::ClientSet;
use super::store::ClientIdx;

/// `app << 1 | restricted`.
pub type Group = u32;

pub fn group_of(app: u32, restricted: bool) -> Group {
    app << 1 | Group::from(restricted)
}

pub fn is_restricted(group: Group) -> bool {
    group & 1 == 1
}

#[derive(Debug)]
struct App {
    name: Arc<str>,
    /// `[unrestricted, restricted]`.
    clients: [ClientSet; 2],
}

#[derive(Debug, Default)]
pub struct Apps {
    ids: HashMap<Arc<str>, u32>,
    /// Indexed by app id; `None` for freed ids awaiting reuse.
    slots: Vec<Option<App>>,
    free: Vec<u32>,
}

impl Apps {
    /// Adds `client` to its app's group, interning the app name. Returns the
    /// shared name (stored in the client entry) and the group.
    pub fn join(&mut self, name: &str, restricted: bool, client: ClientIdx) -> (Arc<str>, Group) {
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => self.intern(name),
        };
        // An interned id always has a live slot (freed only when empty).
        let app = self.slots[id as usize]
            .as_mut()
            .expect("interned app has a slot");
        app.clients[usize::from(restricted)].insert(client);
        (app.name.clone(), group_of(id, restricted))
    }

    fn intern(&mut self, name: &str) -> u32 {
        let name: Arc<str> = name.into();
        let app = App {
            name: name.clone(),
            clients: Default::default(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(app);
                id
            }
            None => {
                self.slots.push(Some(app));
                // Groups need one spare bit; a shard never holds 2^31 apps
                // (each app has at least one connected client).
                u32::try_from(self.slots.len() - 1)
                    .ok()
                    .filter(|&id| id < 1 << 31)
                    .expect("fewer than 2^31 apps per shard")
            }
        };
        self.ids.insert(name, id);
        id
    }

    /// Removes `client` from `group`, freeing the app id once it is empty.
    pub fn leave(&mut self, group: Group, client: ClientIdx) {
        let id = group >> 1;
        let Some(Some(app)) = self.slots.get_mut(id as usize) else {
            return;
        };
        app.clients[usize::from(is_restricted(group))].remove(client);
        if app.clients.iter().all(ClientSet::is_empty) {
            self.ids.remove(&app.name);
            self.slots[id as usize] = None;
            self.free.push(id);
        }
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The set of one group (empty sets included).
    pub fn clients(&self, group: Group) -> Option<&ClientSet> {
        let app = self.slots.get((group >> 1) as usize)?.as_ref()?;
        Some(&app.clients[usize::from(is_restricted(group))])
    }

    /// Every live group with its set.
    pub fn groups(&self) -> impl Iterator<Item = (Group, &ClientSet)> {
        self.slots.iter().enumerate().flat_map(|(id, app)| {
            app.iter().flat_map(move |app| {
                // Slot indices fit in u32: `intern` checked it.
                let id = id as u32;
                [
                    (group_of(id, false), &app.clients[0]),
                    (group_of(id, true), &app.clients[1]),
                ]
            })
        })
    }

    /// Every application with clients here, and how many (restricted or
    /// not).
    pub fn counts(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.slots.iter().flatten().filter_map(|app| {
            let n = app.clients[0].len() + app.clients[1].len();
            (n > 0).then_some((&app.name, n))
        })
    }

    pub fn name(&self, id: u32) -> Option<&Arc<str>> {
        Some(&self.slots.get(id as usize)?.as_ref()?.name)
    }

    /// For the consistency check: the number of interned names.
    pub fn interned(&self) -> usize {
        self.ids.len()
    }
}
