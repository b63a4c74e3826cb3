//! The sandbox MPI for local runs: everyone is found, with a stable fake ICN derived from the participant id.

use sha2::{Digest, Sha256};

use super::Identity;

/// ICN-shaped (`NNNNNNNNNNVNNNNNN`) and the same for the same participant id on every run and replica, so
/// ICN-keyed toggles bucket a sandbox Veteran consistently.
pub(crate) fn lookup(participant_id: &str) -> Identity {
    let digest = Sha256::digest(participant_id.as_bytes());
    let number = |bytes: &[u8], digits: u32| {
        let mut value = [0u8; 8];
        value.copy_from_slice(bytes);
        u64::from_be_bytes(value) % 10u64.pow(digits)
    };
    let icn = format!("{:010}V{:06}", number(&digest[..8], 10), number(&digest[8..16], 6));
    Identity { icn, first_name: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icns_are_stable_distinct_and_icn_shaped() {
        let a = lookup("600043201");
        assert_eq!(a.icn, lookup("600043201").icn);
        assert_ne!(a.icn, lookup("600043202").icn);
        assert_eq!(a.icn.len(), 17);
        assert_eq!(a.icn.as_bytes()[10], b'V');
        assert!(a.icn.bytes().enumerate().all(|(i, b)| i == 10 || b.is_ascii_digit()));
    }
}
