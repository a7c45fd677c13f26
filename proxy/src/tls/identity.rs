//! Who a certificate says it is: the DNS names and URIs of its
//! subjectAltName extension (RFC 5280 §4.2.1.6), read straight from DER.
//!
//! SPIFFE identities (`spiffe://cluster.local/ns/shop/sa/order`) are SAN
//! URIs, so this is all inbound mTLS needs to allow or refuse a peer, and
//! all SNI selection needs to learn a certificate's names. webpki checks
//! names but does not list them, and a full X.509 parser is a large
//! dependency for one extension, so this walks the few DER layers itself.
//! It only reads certificates that rustls has already parsed or verified;
//! anything malformed yields no names.

/// The names a certificate's subjectAltName lists.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names {
    pub dns: Vec<String>,
    pub uris: Vec<String>,
}

impl Names {
    /// Every name, URIs first (the SPIFFE identity is the one that matters).
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.uris.iter().chain(self.dns.iter()).map(String::as_str)
    }

    /// The names as one comma-separated string, for logs and headers.
    pub fn joined(&self) -> String {
        let all: Vec<&str> = self.all().collect();
        if all.is_empty() {
            "(no subjectAltName)".into()
        } else {
            all.join(",")
        }
    }
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// id-ce-subjectAltName, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
/// GeneralName `[2] IMPLICIT IA5String` (dNSName).
const DNS_NAME: u8 = 0x82;
/// GeneralName `[6] IMPLICIT IA5String` (uniformResourceIdentifier).
const URI: u8 = 0x86;

/// Reads one DER element: (tag, contents, rest).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The subjectAltName names of a DER certificate; empty when it has none.
pub fn names(cert_der: &[u8]) -> Names {
    san(cert_der).unwrap_or_default()
}

fn san(cert_der: &[u8]) -> Option<Names> {
    let (tag, cert, _) = element(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // The extensions are the last field of TBSCertificate, tagged [3].
    let mut extensions = None;
    while !tbs.is_empty() {
        let (tag, body, rest) = element(tbs)?;
        if tag == EXTENSIONS {
            extensions = Some(body);
        }
        tbs = rest;
    }
    let (tag, mut list, _) = element(extensions?)?;
    if tag != SEQUENCE {
        return None;
    }
    while !list.is_empty() {
        let (_, ext, rest) = element(list)?;
        list = rest;
        let (tag, oid, mut fields) = element(ext)?;
        if tag != OID || oid != SAN_OID {
            continue;
        }
        let (mut tag, mut value, rest) = element(fields)?;
        if tag == BOOLEAN {
            fields = rest;
            (tag, value, _) = element(fields)?;
        }
        if tag != OCTET_STRING {
            return None;
        }
        return general_names(value);
    }
    None
}

fn general_names(value: &[u8]) -> Option<Names> {
    let (tag, mut seq, _) = element(value)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut names = Names::default();
    while !seq.is_empty() {
        let (tag, body, rest) = element(seq)?;
        seq = rest;
        let text = || std::str::from_utf8(body).ok().map(str::to_owned);
        match tag {
            DNS_NAME => names.dns.extend(text().map(|t| t.to_ascii_lowercase())),
            URI => names.uris.extend(text()),
            _ => {}
        }
    }
    Some(names)
}

/// Whether a certificate with `names` is one of the `allowed` identities:
/// a SAN URI equal to an allowed one, or a DNS name equal to one
/// (case-insensitive). `*.example.com` in the list allows any one-label
/// subdomain, as a wildcard certificate would.
pub fn allowed(names: &Names, allowed: &[String]) -> bool {
    allowed.iter().any(|want| {
        if want.contains("://") {
            names.uris.iter().any(|u| u == want)
        } else if let Some(suffix) = want.strip_prefix('*') {
            names.dns.iter().any(|d| {
                d.len() > suffix.len()
                    && d.ends_with(&suffix.to_ascii_lowercase())
                    && !d[..d.len() - suffix.len()].contains('.')
            })
        } else {
            names.dns.iter().any(|d| d.eq_ignore_ascii_case(want))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn dns_names_and_uris_are_read() {
        let der = cert(vec![
            rcgen::SanType::DnsName("Shop.Example.com".try_into().unwrap()),
            rcgen::SanType::URI(
                "spiffe://cluster.local/ns/shop/sa/order"
                    .try_into()
                    .unwrap(),
            ),
            rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ]);
        let names = names(&der);
        assert_eq!(names.dns, ["shop.example.com"]);
        assert_eq!(names.uris, ["spiffe://cluster.local/ns/shop/sa/order"]);
    }

    #[test]
    fn no_san_and_garbage_give_no_names() {
        assert_eq!(names(&cert(vec![])), Names::default());
        assert_eq!(names(b"\x30\x82\xff"), Names::default());
        assert_eq!(names(&[]), Names::default());
    }

    #[test]
    fn allow_list_matches_uris_dns_names_and_wildcards() {
        let n = Names {
            dns: vec!["order.shop.svc".into()],
            uris: vec!["spiffe://cluster.local/ns/shop/sa/order".into()],
        };
        assert!(allowed(
            &n,
            &["spiffe://cluster.local/ns/shop/sa/order".into()]
        ));
        assert!(!allowed(
            &n,
            &["spiffe://cluster.local/ns/shop/sa/cart".into()]
        ));
        assert!(allowed(&n, &["ORDER.shop.svc".into()]));
        assert!(allowed(&n, &["*.shop.svc".into()]));
        assert!(!allowed(&n, &["*.svc".into()]));
        assert!(!allowed(&n, &[]));
    }
}
