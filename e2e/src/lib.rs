//! Kandle's end-to-end suite and the two stand-ins it brings for machines without a
//! cluster: [`apiserver`] (a Kubernetes API server in process) and [`agent`] (a node agent
//! that runs pods as local processes, against any API server).

pub mod agent;
pub mod apiserver;
pub mod cluster;

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds).
pub(crate) fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `x` as `len` characters of the alphabet Kubernetes uses for generated name suffixes.
pub(crate) fn name_suffix(mut x: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len).map(|_| {
        let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
        x /= ALPHABET.len() as u64;
        c
    }).collect()
}
