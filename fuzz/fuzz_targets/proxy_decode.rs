//! The PROXY protocol decoder (`wsgate::proxy_protocol::decode`) on arbitrary bytes, as a
//! listener behind a load balancer reads them from a client connection.
//!
//! Input layout: a flags byte (bit 0: version 2), then the bytes received.
//!
//! Checked: no panic; a decoded header consumed at most the input, at most 107 bytes for
//! version 1 and at most the fixed part, the largest address block and the TLV bound for
//! version 2; every proper prefix of a decoded header needs more bytes (so the server may read
//! it piecewise), and decoding exactly the consumed bytes gives the same header; a version 2
//! PROXY header names the same addresses as the independent `ppp` crate reads.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proxy_protocol::{decode, Proxied, Version, V1_MAX_BYTES, V2_MAX_TLV_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let version = if flags & 1 != 0 { Version::V2 } else { Version::V1 };
    let Ok(Some((header, n))) = decode(version, bytes) else {
        return;
    };
    assert!(n <= bytes.len());
    match version {
        Version::V1 => assert!(n <= V1_MAX_BYTES),
        Version::V2 => assert!(n <= 16 + 36 + V2_MAX_TLV_BYTES),
    }
    assert_eq!(decode(version, &bytes[..n]), Ok(Some((header, n))));
    for k in 0..n {
        assert_eq!(decode(version, &bytes[..k]), Ok(None), "prefix of {k} bytes");
    }
    if let (Version::V2, Proxied::Proxy { source, destination }) = (version, header) {
        let parsed = ppp::v2::Header::try_from(&bytes[..n]).expect("ppp reads the header");
        let got = match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => (
                std::net::SocketAddr::from((a.source_address, a.source_port)),
                std::net::SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            ppp::v2::Addresses::IPv6(a) => (
                std::net::SocketAddr::from((a.source_address, a.source_port)),
                std::net::SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            other => panic!("ppp reads {other:?}"),
        };
        assert_eq!(got, (source, destination));
    }
});
