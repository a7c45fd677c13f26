//! Who a certificate says it is: the DNS names and URIs of its
//! subjectAltName extension (RFC 5280 §4.2.1.6), read straight from DER.
//!
//! SPIFFE identities (`spiffe://cluster.local/ns/shop/sa/order`) are SAN
//! URIs, so this is all inbound mTLS needs to allow or refuse a peer, and
//! all SNI selection needs to learn a certificate's names. webpki checks
//! names but does not list them, and a full X.509 parser is a large
//! dependency for one extension, so this walks the few DER layers itself.
//! It only reads certificates that rustls has already parsed or verified;
//! anything malformed yields no names. [`validity`] reads the other field
//! an operator needs from a certificate: when it expires.

/// The names a certificate's subjectAltName lists.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    pub(crate) dns: Vec<String>,
    pub(crate) uris: Vec<String>,
}

impl Names {
    /// Every name, URIs first (the SPIFFE identity is the one that matters).
    pub(crate) fn all(&self) -> impl Iterator<Item = &str> {
        self.uris.iter().chain(self.dns.iter()).map(String::as_str)
    }

    /// The names as one comma-separated string, for logs and headers.
    pub(crate) fn joined(&self) -> String {
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
pub(crate) fn names(cert_der: &[u8]) -> Names {
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

const INTEGER: u8 = 0x02;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version` in TBSCertificate.
const VERSION: u8 = 0xa0;

/// A certificate's validity period, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

/// The validity period of a DER certificate, if it can be read.
pub(crate) fn validity(cert_der: &[u8]) -> Option<Validity> {
    let (_, cert, _) = element(cert_der)?;
    let (_, mut tbs, _) = element(cert)?;
    let (tag, _, rest) = element(tbs)?;
    if tag == VERSION {
        tbs = rest;
    }
    // serialNumber, signature, issuer, then validity.
    let (tag, _, rest) = element(tbs)?;
    if tag != INTEGER {
        return None;
    }
    let (_, _, rest) = element(rest)?;
    let (_, _, rest) = element(rest)?;
    let (tag, validity, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, before, rest) = element(validity)?;
    let not_before = time(tag, before)?;
    let (tag, after, _) = element(rest)?;
    Some(Validity {
        not_before,
        not_after: time(tag, after)?,
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as
/// RFC 5280 §4.1.2.5 allows them.
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        UTC_TIME if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
pub(crate) fn allowed(names: &Names, allowed: &[String]) -> bool {
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
    fn validity_is_read_in_both_time_forms() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.not_before = rcgen::date_time_ymd(1999, 1, 1);
        params.not_after = rcgen::date_time_ymd(2000, 3, 1);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        // UTCTime: 1999-01-01, 2000-03-01.
        assert_eq!(
            validity(&der),
            Some(Validity {
                not_before: 915_148_800,
                not_after: 951_868_800
            })
        );
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        // GeneralizedTime past 2049.
        assert_eq!(validity(&der).unwrap().not_after, 4_102_444_800);
        assert_eq!(validity(b"\x30\x00"), None);
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
