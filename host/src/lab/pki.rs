//! The lab's certificates, as kubeadm makes a cluster's: one certificate
//! authority for the cluster and one for the front proxy, the API server's
//! serving certificate, a client certificate per component (its user name
//! and groups are the certificate's CN and O, which the API server's RBAC
//! and Node authorizers read), and the key that signs ServiceAccount tokens.
//!
//! Keys are ECDSA P-256, written as PKCS#8 PEM, readable only by root.
//! Nothing leaves the lab's directory; `lab down` removes it.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Who a client certificate says its holder is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user name (CN).
    pub user: String,
    /// The groups (O).
    pub groups: Vec<String>,
}

/// A certificate authority that signs the lab's certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub files: CertFiles,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

impl Authority {
    /// A new self-signed authority named `name`, written to `dir/FILE.crt`
    /// and `dir/FILE.key`.
    pub fn create(dir: &Path, file: &str, name: &str) -> anyhow::Result<Authority> {
        let key = KeyPair::generate().context("generating a key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let files = CertFiles {
            cert: dir.join(format!("{file}.crt")),
            key: dir.join(format!("{file}.key")),
        };
        write_public(&files.cert, &cert.pem())?;
        write_private(&files.key, &key.serialize_pem())?;
        Ok(Authority {
            issuer: Issuer::new(params, key),
            files,
        })
    }

    fn sign(
        &self,
        dir: &Path,
        file: &str,
        mut params: CertificateParams,
    ) -> anyhow::Result<CertFiles> {
        let key = KeyPair::generate().context("generating a key")?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: dir.join(format!("{file}.crt")),
            key: dir.join(format!("{file}.key")),
        };
        write_public(&files.cert, &cert.pem())?;
        write_private(&files.key, &key.serialize_pem())?;
        Ok(files)
    }

    /// A serving certificate for `names` and `addresses`.
    pub fn server(
        &self,
        dir: &Path,
        file: &str,
        common_name: &str,
        names: &[&str],
        addresses: &[IpAddr],
    ) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for n in names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*n).try_into()?));
        }
        for a in addresses {
            params.subject_alt_names.push(SanType::IpAddress(*a));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(dir, file, params)
    }

    /// A client certificate for `who`.
    pub fn client(&self, dir: &Path, file: &str, who: &Identity) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for g in &who.groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, g.as_str());
        }
        params
            .distinguished_name
            .push(DnType::CommonName, who.user.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(dir, file, params)
    }
}

/// The key pair that signs and verifies ServiceAccount tokens: `sa.key`
/// (private) and `sa.pub`.
pub fn service_account_key(dir: &Path) -> anyhow::Result<CertFiles> {
    let key = KeyPair::generate().context("generating the ServiceAccount key")?;
    let files = CertFiles {
        cert: dir.join("sa.pub"),
        key: dir.join("sa.key"),
    };
    write_public(&files.cert, &key.public_key_pem())?;
    write_private(&files.key, &key.serialize_pem())?;
    Ok(files)
}

/// A kubeconfig for `server` that trusts `ca`, authenticating with a client
/// certificate or a bearer token.
pub fn kubeconfig(server: &str, ca: &Path, user: KubeconfigUser<'_>) -> String {
    let user = match user {
        KubeconfigUser::Cert(c) => format!(
            "client-certificate: {}\n    client-key: {}",
            c.cert.display(),
            c.key.display()
        ),
        KubeconfigUser::Token(t) => format!("token: {t}"),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: lab
  user:
    {user}
contexts:
- name: lab
  context:
    cluster: lab
    user: lab
current-context: lab
",
        ca = ca.display()
    )
}

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone, Copy)]
pub enum KubeconfigUser<'a> {
    Cert(&'a CertFiles),
    Token(&'a str),
}

/// Write `text` readable by root only (kubeconfigs hold credentials).
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    write_private(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_signs_servers_and_clients() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create(dir.path(), "ca", "switchyard-lab").unwrap();
        let s = ca
            .server(
                dir.path(),
                "apiserver",
                "kube-apiserver",
                &["kubernetes", "localhost"],
                &["127.0.0.1".parse().unwrap()],
            )
            .unwrap();
        let c = ca
            .client(
                dir.path(),
                "admin",
                &Identity {
                    user: "admin".into(),
                    groups: vec!["system:masters".into()],
                },
            )
            .unwrap();
        for f in [&s.cert, &c.cert, &ca.files.cert] {
            let t = std::fs::read_to_string(f).unwrap();
            assert!(t.starts_with("-----BEGIN CERTIFICATE-----"), "{t}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&c.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "keys are root's alone");
        let sa = service_account_key(dir.path()).unwrap();
        assert!(
            std::fs::read_to_string(&sa.cert)
                .unwrap()
                .contains("PUBLIC KEY")
        );
        let kc = kubeconfig(
            "https://198.18.1.2:6443",
            &ca.files.cert,
            KubeconfigUser::Token("abc"),
        );
        assert!(kc.contains("token: abc") && kc.contains("server: https://198.18.1.2:6443"));
    }
}
