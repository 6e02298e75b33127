//! The coordinator's certificate authority (rcgen). It owns the CA key and is the only place
//! certificates are issued. Whatever a CSR asks for (SANs, CA flag, subject, usages) is
//! ignored: only its public key is used, and the coordinator writes every field itself,
//! including a random serial. It never issues a CA certificate from a CSR.
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use dockfra_common::identity;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate work failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate request is not valid: {0}")]
    BadCsr(rcgen::Error),
}

/// A freshly made certificate and, where we made the key, its private key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Option<String>,
    pub serial_hex: String,
}

/// Who a leaf certificate is for.
pub enum Subject<'a> {
    Coordinator,
    Operator {
        name: &'a str,
    },
    Agent {
        target: &'a str,
    },
    /// The dashboard's and REST API's HTTPS listener: the names browsers and scripts use
    /// (DNS names or IP addresses), no dockfra identity (it authenticates nothing to agents).
    Web {
        names: &'a [String],
    },
}

pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system RNG");
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// A new self-signed CA valid for ten years.
    pub fn generate() -> Result<(Self, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "dockfra CA");
        dn.push(DnType::OrganizationName, "dockfra");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::from_secs(300);
        p.not_after = now + Duration::from_secs(10 * 365 * 86400);
        p.serial_number = Some(random_serial());
        let cert = p.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok((Self { cert_pem: cert.pem(), key }, key_pem))
    }

    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        Ok(Self { cert_pem: cert_pem.to_string(), key: KeyPair::from_pem(key_pem)? })
    }

    fn leaf_params(subject: &Subject<'_>, ttl: Duration) -> Result<CertificateParams, CaError> {
        if let Subject::Web { names } = subject {
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "dockfra web");
            p.distinguished_name = dn;
            for n in names.iter() {
                p.subject_alt_names.push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.as_str().try_into()?),
                });
            }
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let now = OffsetDateTime::now_utc();
            p.not_before = now - Duration::from_secs(300);
            p.not_after = now + ttl;
            p.serial_number = Some(random_serial());
            return Ok(p);
        }
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let (cn, uri, dns) = match subject {
            Subject::Coordinator => (
                "dockfra coordinator".to_string(),
                identity::COORDINATOR_URI.to_string(),
                Some(identity::COORDINATOR_DNS.to_string()),
            ),
            Subject::Operator { name } => (format!("dockfra operator {name}"), identity::operator_uri(name), None),
            Subject::Agent { target } => {
                (format!("dockfra agent {target}"), identity::target_uri(target), Some(identity::agent_dns(target)))
            }
            Subject::Web { .. } => unreachable!("handled above"),
        };
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        if let Some(dns) = dns {
            p.subject_alt_names.push(SanType::DnsName(dns.try_into()?));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = match subject {
            // An operator's certificate only ever authenticates a client.
            Subject::Operator { .. } => vec![ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::from_secs(300);
        p.not_after = now + ttl;
        p.serial_number = Some(random_serial());
        Ok(p)
    }

    /// Issue a leaf with a key we generate here (coordinator and admin identities).
    pub fn issue_with_key(&self, subject: Subject<'_>, ttl: Duration) -> Result<Issued, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let p = Self::leaf_params(&subject, ttl)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = p.signed_by(&key, &issuer)?;
        let serial_hex = hex::encode(p.serial_number.as_ref().map(|s| s.to_bytes()).unwrap_or_default());
        Ok(Issued { cert_pem: cert.pem(), key_pem: Some(key.serialize_pem()), serial_hex })
    }

    /// Issue a leaf for a CSR. Only the CSR's (signature-checked) public key is used.
    pub fn issue_for_csr(&self, csr_pem: &str, subject: Subject<'_>, ttl: Duration) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::BadCsr)?;
        let p = Self::leaf_params(&subject, ttl)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = p.signed_by(&csr.public_key, &issuer)?;
        let serial_hex = hex::encode(p.serial_number.as_ref().map(|s| s.to_bytes()).unwrap_or_default());
        Ok(Issued { cert_pem: cert.pem(), key_pem: None, serial_hex })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_asks_are_overwritten() {
        let (ca, _) = Ca::generate().unwrap();
        // A hostile CSR asking to be a CA for another target.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut asked = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        asked.subject_alt_names.push(SanType::URI(identity::target_uri("other").try_into().unwrap()));
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca.issue_for_csr(&csr, Subject::Agent { target: "edge-rpi3" }, Duration::from_secs(3600)).unwrap();
        let der = identity::first_cert_der(&issued.cert_pem).unwrap();
        let info = identity::cert_info(&der).unwrap();
        assert_eq!(info.uris, vec![identity::target_uri("edge-rpi3")]);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!parsed.is_ca());
        assert_eq!(info.serial_hex, issued.serial_hex);
        // Two issues never share a serial.
        let again = ca.issue_for_csr(&csr, Subject::Agent { target: "edge-rpi3" }, Duration::from_secs(3600)).unwrap();
        assert_ne!(again.serial_hex, issued.serial_hex);
    }
}
