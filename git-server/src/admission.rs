//! Who may hold a connection: a cap per source address on connections that have not
//! authenticated yet, a cap per source address on connections overall, and a global cap for
//! everything together.
//!
//! # Guarantees
//! One source address holds at most [`Limits::unauthenticated_per_address`] connections that
//! have not signed in and at most [`Limits::connections_per_address`] in all; every connection
//! past those is closed at once, before a byte of SSH is read. So however many connections one
//! address opens (half-open floods included), at least
//! `connections - connections_per_address` slots stay for every other address, and a client
//! from another address is served. IPv6 sources count per /64 (what one subscriber is usually
//! given), IPv4-mapped IPv6 addresses as the IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Most connections served at once, from all addresses together. Each may hold a git process
/// and a build, so the cap keeps a flood of connections from exhausting processes and memory;
/// 256 is far above the concurrent pushes a single host builds.
pub const MAX_CONNECTIONS: usize = 256;
/// Most connections one source address may hold at once. 32 lets a team behind one NAT
/// address, or a CI runner, push and fetch many webspaces in parallel, and keeps 224 of the
/// 256 global slots out of any single address's reach.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 32;
/// Most connections one source address may hold before they authenticate. A client signs in
/// within a second, so a few parallel `git` commands from one machine never come near 8;
/// a half-open flood from one address stops there instead of filling the global cap (OpenSSH's
/// `MaxStartups` is global, which is how one address locks everyone out of it).
pub const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 8;

/// The caps, tunable by flags (`slipway git-server --max-connections ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, from all addresses.
    pub connections: usize,
    /// Connections at once from one source address.
    pub connections_per_address: usize,
    /// Connections not yet authenticated from one source address.
    pub unauthenticated_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: MAX_CONNECTIONS,
            connections_per_address: MAX_CONNECTIONS_PER_ADDRESS,
            unauthenticated_per_address: MAX_UNAUTHENTICATED_PER_ADDRESS,
        }
    }
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The global cap is reached.
    Full,
    /// This address holds its share of connections.
    AddressFull,
    /// This address holds its share of connections that have not authenticated.
    AddressUnauthenticatedFull,
}

impl Refusal {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "connection limit reached",
            Self::AddressFull => "connection limit of this address reached",
            Self::AddressUnauthenticatedFull => {
                "limit of unauthenticated connections of this address reached"
            }
        }
    }
}

/// The address a cap counts against: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(IpAddr);

impl Source {
    fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let network = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(network)))
                }
            },
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    connections: usize,
    unauthenticated: usize,
}

#[derive(Debug, Default)]
struct State {
    connections: usize,
    by_source: HashMap<Source, Counts>,
}

/// Counts the connections held, and admits or refuses new ones.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::default(),
        })
    }

    /// Admits a new, unauthenticated connection from `peer`, or says which cap refuses it.
    /// The returned ticket holds the slots until it is dropped.
    ///
    /// # Errors
    /// The first cap that is reached.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refusal> {
        let source = Source::of(peer);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let counts = state.by_source.get(&source);
        let (connections, unauthenticated) =
            counts.map_or((0, 0), |c| (c.connections, c.unauthenticated));
        if unauthenticated >= self.limits.unauthenticated_per_address {
            return Err(Refusal::AddressUnauthenticatedFull);
        }
        if connections >= self.limits.connections_per_address {
            return Err(Refusal::AddressFull);
        }
        if state.connections >= self.limits.connections {
            return Err(Refusal::Full);
        }
        state.connections += 1;
        let counts = state.by_source.entry(source).or_default();
        counts.connections += 1;
        counts.unauthenticated += 1;
        Ok(Ticket {
            admission: self.clone(),
            source,
            authenticated: AtomicBool::new(false),
        })
    }

    fn release(&self, source: Source, unauthenticated: bool, connection: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if connection {
            state.connections = state.connections.saturating_sub(1);
        }
        if let Some(counts) = state.by_source.get_mut(&source) {
            if unauthenticated {
                counts.unauthenticated = counts.unauthenticated.saturating_sub(1);
            }
            if connection {
                counts.connections = counts.connections.saturating_sub(1);
            }
            if counts.connections == 0 {
                state.by_source.remove(&source);
            }
        }
    }
}

/// One admitted connection's slots; dropping it frees them.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: Source,
    authenticated: AtomicBool,
}

impl Ticket {
    /// The connection signed in: it no longer counts against its address's unauthenticated
    /// cap (it still counts against the others).
    pub fn authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::AcqRel) {
            self.admission.release(self.source, true, false);
        }
    }

    /// Whether [`Ticket::authenticated`] was called.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let unauthenticated = !self.authenticated.load(Ordering::Acquire);
        self.admission.release(self.source, unauthenticated, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn limits() -> Limits {
        Limits {
            connections: 10,
            connections_per_address: 4,
            unauthenticated_per_address: 2,
        }
    }

    #[test]
    fn a_flood_from_one_address_leaves_room_for_others() {
        let admission = Admission::new(limits());
        let held: Vec<_> = (0..2)
            .map(|_| admission.admit(ip("10.0.0.2")).expect("admitted"))
            .collect();
        for _ in 0..100 {
            assert_eq!(
                admission.admit(ip("10.0.0.2")).err(),
                Some(Refusal::AddressUnauthenticatedFull)
            );
        }
        assert!(admission.admit(ip("10.0.0.3")).is_ok());
        drop(held);
    }

    #[test]
    fn signing_in_frees_the_unauthenticated_slot_but_not_the_connection() {
        let admission = Admission::new(limits());
        let mut held = vec![];
        for _ in 0..4 {
            let ticket = admission.admit(ip("10.0.0.2")).expect("admitted");
            ticket.authenticated();
            ticket.authenticated();
            held.push(ticket);
        }
        assert!(held.iter().all(Ticket::is_authenticated));
        assert_eq!(
            admission.admit(ip("10.0.0.2")).err(),
            Some(Refusal::AddressFull)
        );
        held.pop();
        let again = admission.admit(ip("10.0.0.2")).expect("a slot was freed");
        drop(again);
        drop(held);
        assert!(
            admission.state.lock().expect("lock").by_source.is_empty(),
            "nothing left behind"
        );
    }

    #[test]
    fn the_global_cap_still_holds_for_many_addresses() {
        let admission = Admission::new(limits());
        let held: Vec<_> = (0..10)
            .map(|i| {
                admission
                    .admit(ip(&format!("10.0.1.{i}")))
                    .expect("admitted")
            })
            .collect();
        assert_eq!(admission.admit(ip("10.0.2.1")).err(), Some(Refusal::Full));
        drop(held);
        assert!(admission.admit(ip("10.0.2.1")).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let admission = Admission::new(limits());
        let _a = admission.admit(ip("2001:db8::1")).expect("admitted");
        let _b = admission.admit(ip("2001:db8::ffff:2")).expect("admitted");
        assert_eq!(
            admission.admit(ip("2001:db8::3")).err(),
            Some(Refusal::AddressUnauthenticatedFull)
        );
        assert!(admission.admit(ip("2001:db8:0:1::1")).is_ok());
        let _c = admission.admit(ip("10.0.0.9")).expect("admitted");
        let _d = admission.admit(ip("::ffff:10.0.0.9")).expect("admitted");
        assert_eq!(
            admission.admit(ip("10.0.0.9")).err(),
            Some(Refusal::AddressUnauthenticatedFull)
        );
    }
}
