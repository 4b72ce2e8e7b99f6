//! SSH public keys as Customers list them: parsing, strength rules, fingerprints.

use std::collections::HashMap;

use ssh_key::{Algorithm, HashAlg, PublicKey};

use crate::Customer;

/// Smallest RSA modulus accepted. 2048 bits is the floor of current guidance (NIST SP 800-131A);
/// OpenSSH itself refuses RSA keys below 1024 bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// An `sshKeys` entry that cannot be used to sign in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The line is not `TYPE BASE64 [COMMENT]` with a key OpenSSH can read.
    #[error(
        "ssh key #{index} does not parse as an OpenSSH public key (`ssh-ed25519 AAAA... comment`)"
    )]
    Unparsable {
        /// Position in `sshKeys`, from 1.
        index: usize,
    },
    /// The entry holds a line break or another control character: one entry is one key, and
    /// a second line could read as a second key wherever the entry is written out.
    #[error(
        "ssh key #{index} spans several lines or holds control characters; list one key per entry"
    )]
    MultipleLines {
        /// Position in `sshKeys`, from 1.
        index: usize,
    },
    /// The key type is too weak to accept.
    #[error(
        "ssh key #{index} is a weak key ({reason}); use an ed25519 key (`ssh-keygen -t ed25519`)"
    )]
    Weak {
        /// Position in `sshKeys`, from 1.
        index: usize,
        /// Why it is weak.
        reason: String,
    },
}

/// Parses one `authorized_keys`-style line (without options) and checks it is strong enough.
///
/// # Errors
/// [`KeyError::MultipleLines`] for an entry with a line break (or any control character),
/// [`KeyError::Unparsable`] for anything that is not an OpenSSH public key (options such as
/// `command=` or `from=` included), [`KeyError::Weak`]
/// for DSA keys and RSA keys under [`MIN_RSA_BITS`].
pub fn parse_public_key(line: &str, index: usize) -> Result<PublicKey, KeyError> {
    if line.trim().chars().any(char::is_control) {
        return Err(KeyError::MultipleLines { index });
    }
    let key = PublicKey::from_openssh(line.trim()).map_err(|_| KeyError::Unparsable { index })?;
    match key.algorithm() {
        Algorithm::Dsa => Err(KeyError::Weak {
            index,
            reason: "DSA".into(),
        }),
        Algorithm::Rsa { .. } => {
            let bits = key.key_data().rsa().map(|rsa| rsa.key_size()).unwrap_or(0);
            if bits < MIN_RSA_BITS {
                Err(KeyError::Weak {
                    index,
                    reason: format!("RSA with {bits} bits, fewer than {MIN_RSA_BITS}"),
                })
            } else {
                Ok(key)
            }
        }
        Algorithm::Other(name) => Err(KeyError::Weak {
            index,
            reason: format!("unknown algorithm {}", name.as_str()),
        }),
        _ => Ok(key),
    }
}

/// The fingerprint Slipway uses to identify a key: `SHA256:` plus unpadded base64, as
/// `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The keys a Customer lists, in order: each entry's position in `sshKeys` (from 1) with its
/// fingerprint, or why it cannot be used.
pub fn listed_keys(customer: &Customer) -> impl Iterator<Item = (usize, Result<String, KeyError>)> {
    customer
        .spec
        .ssh_keys
        .iter()
        .enumerate()
        .map(|(position, line)| {
            let index = position + 1;
            (
                index,
                parse_public_key(line, index).map(|key| fingerprint(&key)),
            )
        })
}

/// One Customer's claim on the keys it lists. When several Customers list one key, the
/// earliest claim holds it: the oldest Customer by `metadata.creationTimestamp` (one without
/// it counts as the newest), then the smaller name. So listing someone else's key in one's own
/// Customer never takes the key from its owner.
///
/// `slipway apply` refuses such a Customer; where one got in anyway (`kubectl apply`, a
/// hand-edited file) the git server's key index gives the key to the earliest claim, and on
/// Kubernetes the operator names the holder in the later Customer's `KeysAvailable` condition.
/// Both order claims by this type's `Ord`, so they cannot disagree on who holds a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    /// When the Customer was created (compared first).
    created: ClaimTime,
    customer: String,
}

/// `metadata.creationTimestamp` as seconds and nanoseconds since the epoch; a Customer
/// without one sorts after every time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ClaimTime {
    At(i64, i32),
    Unknown,
}

impl Claim {
    /// The claim of `customer`; `None` for a Customer without a name.
    pub fn of(customer: &Customer) -> Option<Self> {
        let name = customer.metadata.name.clone()?;
        let created = customer
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(ClaimTime::Unknown, |time| {
                ClaimTime::At(time.0.as_second(), time.0.subsec_nanosecond())
            });
        Some(Self {
            created,
            customer: name,
        })
    }

    /// The Customer that claims.
    pub fn customer(&self) -> &str {
        &self.customer
    }
}

/// Who holds each key that `customers` list, by fingerprint: the earliest [`Claim`].
pub fn holders<'a>(customers: impl IntoIterator<Item = &'a Customer>) -> HashMap<String, Claim> {
    let mut holders: HashMap<String, Claim> = HashMap::new();
    for customer in customers {
        let Some(claim) = Claim::of(customer) else {
            continue;
        };
        for (_, listed) in listed_keys(customer) {
            let Ok(fingerprint) = listed else {
                continue;
            };
            match holders.get_mut(&fingerprint) {
                Some(holder) if *holder <= claim => {}
                Some(holder) => *holder = claim.clone(),
                None => {
                    holders.insert(fingerprint, claim.clone());
                }
            }
        }
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbfO2R8HNnKRTcsKxq2EnNjxUIU6+xPO5NZTxPa0Cb6 alice@laptop";

    #[test]
    fn ed25519_keys_parse_and_fingerprint_like_ssh_keygen() {
        let key = parse_public_key(ED25519, 1).expect("valid key");
        assert!(fingerprint(&key).starts_with("SHA256:"));
        assert_eq!(fingerprint(&key).len(), "SHA256:".len() + 43);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 AAAA",
            "hello world",
            "ssh-ed25519 !!!!",
        ] {
            assert_eq!(
                parse_public_key(bad, 3),
                Err(KeyError::Unparsable { index: 3 }),
                "{bad}"
            );
        }
    }

    #[test]
    fn dsa_keys_are_weak() {
        let dsa = "ssh-dss AAAAB3NzaC1kc3MAAACBAJ5Ir5IiVUG0bpJ3yXmTuVeE/xWtGsSQs3Xv0dhO1kH6BXvjcpS0W0MoQYoVi6Qm0Hw0Bm2qtCrbNTDAbxT25YqnBRJ7Fx7IYo7/VXdjeX2HM1cvHVw19kzQz/Q3cB2wBrzA/bxqGn1Lx9eGgWvqbPXGsRtx9YqA8lTbJSbgO3xPAAAAFQDDnMgCHn3yoq+dGB2bPZoG6i8DPQAAAIEAgpGn5yPCoRvrjLkBZQ6UbKbTaMYNHV5PPAa/nkDGsc4ahHQYvjaJLtgfiYQm9Sb47ldmTU2/j0Wn7Mu2wYQ5E0BnT4PAuDMN6WSRYpAC8JNfeHAIbX7lOhSQpqbFOEGnQfxJ8h0T4Sx4sLnvOQHEJu4tfxTiFrQKJuxUMfl7rQAAAIBdzSySFyD3zOsJNWUiltUoyVYGXG4jM8bmmU9pQjWN7D56Z6UDCT4s+ogzoM7DgIxrbNYHD2LgUqjZHe14pW4PWDX0pBAB3Ao+5XAgYcEVYGBpzdkTXNuSc2F5cqbPYD9wS+V6AAUbJmEQxdO4TZb8PAs4MdjXy5n6bOe3Li6n9w== old";
        assert!(matches!(
            parse_public_key(dsa, 1),
            Err(KeyError::Weak { .. }) | Err(KeyError::Unparsable { .. })
        ));
    }

    #[test]
    fn rsa_under_2048_bits_is_weak() {
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC5ztnrXeoh3Pi36UQ+5Qe9ztzVGvWVMBlF+2G98FB5PFyADKGap6kEQsJ/qRd1mqKsavAEnSJ5jPRfPOIejQvFOt+X2bT/21cBzV6Z00aBPPBNNOEcoZHd1P1Y58R443EnSHhaoTe0TQ+9Vbfx5uhP6t42Pwa/LVq5ltkDqvBGgQ== weak";
        assert!(matches!(
            parse_public_key(rsa, 2),
            Err(KeyError::Weak { index: 2, .. })
        ));
    }

    fn customer(name: &str, created: Option<&str>, keys: &[&str]) -> Customer {
        let mut customer = Customer::new(
            name,
            crate::CustomerSpec {
                email: format!("{name}@example.com"),
                display_name: None,
                ssh_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            },
        );
        customer.metadata.creation_timestamp = created.map(|at| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at.parse().expect("a time"))
        });
        customer
    }

    #[test]
    fn the_earliest_customer_holds_a_key_then_the_smaller_name() {
        const OTHER: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbw7FysavQjQK45aXPIoWcokMUPd7XpO7cX9Clj01bj b";
        let fp = |line: &str| fingerprint(&parse_public_key(line, 1).expect("valid"));
        let customers = [
            // aaron's name sorts first, but his Customer is newer.
            customer("aaron", Some("2026-01-03T00:00:00Z"), &[ED25519]),
            customer("alice", Some("2026-01-02T00:00:00Z"), &[ED25519]),
            // No creation time (a hand-written file) counts as the newest.
            customer("aardvark", None, &[ED25519, OTHER]),
            // Nanoseconds count.
            customer("bob", Some("2026-01-02T00:00:00.5Z"), &["nonsense", OTHER]),
        ];
        let held = holders(&customers);
        assert_eq!(held[&fp(ED25519)].customer(), "alice");
        assert_eq!(held[&fp(OTHER)].customer(), "bob");
        assert_eq!(held.len(), 2);
        // Same creation time: the smaller name.
        let at = Some("2026-01-02T00:00:00Z");
        let tied = [
            customer("bob", at, &[ED25519]),
            customer("alice", at, &[ED25519]),
        ];
        assert_eq!(holders(&tied)[&fp(ED25519)].customer(), "alice");
        let listed: Vec<_> = listed_keys(&customers[3]).collect();
        assert_eq!(listed[0], (1, Err(KeyError::Unparsable { index: 1 })));
        assert_eq!(listed[1], (2, Ok(fp(OTHER))));
    }

    /// `authorized_keys` options would give a key powers (or limits) the server never applies,
    /// and a second line would smuggle in a second key: both are refused, not stripped.
    #[test]
    fn options_and_extra_lines_are_refused() {
        for bad in [
            format!("command=\"/bin/sh\" {ED25519}"),
            format!("from=\"10.0.0.1\" {ED25519}"),
            format!("no-pty,command=\"x\" {ED25519}"),
        ] {
            assert_eq!(
                parse_public_key(&bad, 1),
                Err(KeyError::Unparsable { index: 1 }),
                "{bad}"
            );
        }
        for bad in [
            format!("{ED25519}\n{ED25519}"),
            format!(
                "{ED25519}\r\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbw7FysavQjQK45aXPIoWcokMUPd7XpO7cX9Clj01bj b"
            ),
            format!("{ED25519}\0"),
        ] {
            assert_eq!(
                parse_public_key(&bad, 1),
                Err(KeyError::MultipleLines { index: 1 }),
                "{bad:?}"
            );
        }
        // Surrounding white space, as YAML block scalars leave it, is not a second line.
        assert!(parse_public_key(&format!("  {ED25519}\n"), 1).is_ok());
    }
}
