//! The agent's CNI socket: one request per connection, JSON both ways (the
//! plugin half-closes after writing its request).

use super::service::CniService;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use switchyard_cni::{Error, Request, Response, code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Listen on `path` until `shutdown` completes; the socket file is removed then.
pub async fn serve(
    path: PathBuf,
    service: Arc<CniService>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by an agent that did not exit cleanly.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // Only root (the runtime that execs the plugin) may ask for pod networks.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!("serving CNI on {}", path.display());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = service.clone();
                    tokio::spawn(async move { connection(stream, service).await });
                }
                Err(e) => tracing::warn!("accepting a CNI connection: {e}"),
            },
            _ = &mut shutdown => break,
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn connection(mut stream: UnixStream, service: Arc<CniService>) {
    let mut buf = vec![];
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        (&mut stream)
            .take(switchyard_cni::MAX_REQUEST as u64 + 1)
            .read_to_end(&mut buf),
    )
    .await;
    let response = match read {
        // The plugin refuses these itself; another client gets told.
        Ok(Ok(n)) if n > switchyard_cni::MAX_REQUEST => Response::Error(Error::new(
            code::INVALID_CONFIG,
            format!(
                "the request is larger than the {} bytes the agent accepts",
                switchyard_cni::MAX_REQUEST
            ),
        )),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&buf) {
            Ok(req) => match recheck(&req) {
                Ok(()) => service.handle(req).await,
                Err(e) => Response::Error(e),
            },
            Err(e) => Response::Error(Error::new(
                code::DECODE,
                format!("the request to the agent is not valid: {e}"),
            )),
        },
        Ok(Err(e)) => Response::Error(Error::new(code::IO, format!("reading the request: {e}"))),
        Err(_) => Response::Error(Error::new(
            code::IO,
            "the plugin sent no complete request within 30 s",
        )),
    };
    let out = serde_json::to_vec(&response).unwrap_or_default();
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// The agent does not trust its socket's clients to have checked.
fn recheck(req: &Request) -> Result<(), Error> {
    if req.env.command.per_attachment() {
        let bad = |m: String| Error::new(code::INVALID_ENVIRONMENT, m);
        switchyard_cni::check_container_id(&req.env.container_id).map_err(bad)?;
        switchyard_cni::check_ifname(&req.env.ifname).map_err(bad)?;
    }
    let negotiated = switchyard_cni::negotiate(&req.config)?;
    if negotiated != req.cni_version
        && !switchyard_cni::SUPPORTED_VERSIONS.contains(&req.cni_version.as_str())
    {
        return Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {} is not supported", req.cni_version),
        ));
    }
    Ok(())
}

/// Whether something answers on the socket.
pub fn is_listening(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}
