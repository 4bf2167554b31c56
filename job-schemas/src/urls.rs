//! The image and test-definition URL policy: `file://` under allowed roots, `http(s)://`.

use std::path::{Component, Path, PathBuf};

use url::Url;

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL: {0}")]
    Malformed(String),
    #[error("unsupported URL scheme \"{0}\"")]
    Scheme(String),
    #[error("file:// URLs must not name a host (found \"{0}\")")]
    FileHost(String),
    #[error("file:// path is not absolute")]
    NotAbsolute,
    #[error("file:// path {0} is outside the allowed roots")]
    OutsideRoots(String),
    #[error("file:// URLs are not allowed in this lab")]
    NoFileRoots,
    #[error("http(s):// URL has no host")]
    NoHost,
}

/// Checks one URL against the policy and returns it parsed.
pub fn check_url(text: &str, file_roots: &[PathBuf]) -> Result<Url, UrlError> {
    let url = Url::parse(text).map_err(|e| UrlError::Malformed(e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(UrlError::NoHost);
            }
        }
        "file" => {
            if let Some(host) = url
                .host_str()
                .filter(|h| !h.is_empty() && *h != "localhost")
            {
                return Err(UrlError::FileHost(host.to_string()));
            }
            let path = url.to_file_path().map_err(|()| UrlError::NotAbsolute)?;
            check_file_path(&path, file_roots)?;
        }
        other => return Err(UrlError::Scheme(other.to_string())),
    }
    Ok(url)
}

fn check_file_path(path: &Path, roots: &[PathBuf]) -> Result<(), UrlError> {
    if roots.is_empty() {
        return Err(UrlError::NoFileRoots);
    }
    // The url crate already resolved dot segments (also percent-encoded ones), but a
    // decoded path must still never climb: refuse any `..` outright.
    let climbs = path.components().any(|c| matches!(c, Component::ParentDir));
    if climbs || !roots.iter().any(|root| path.starts_with(root)) {
        return Err(UrlError::OutsideRoots(path.display().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Vec<PathBuf> {
        vec![PathBuf::from("/srv/images")]
    }

    #[test]
    fn accepts_http_and_files_under_roots() {
        assert!(check_url("https://example.org/a.img", &roots()).is_ok());
        assert!(check_url("file:///srv/images/a.img", &roots()).is_ok());
        assert!(check_url("file://localhost/srv/images/x/a.img", &roots()).is_ok());
    }

    #[test]
    fn refuses_escapes_and_other_schemes() {
        assert_eq!(
            check_url("file:///srv/images/../../etc/shadow", &roots()),
            Err(UrlError::OutsideRoots("/etc/shadow".into()))
        );
        assert_eq!(
            check_url("file:///srv/images/%2e%2e/etc/shadow", &roots()),
            Err(UrlError::OutsideRoots("/srv/etc/shadow".into()))
        );
        assert_eq!(
            check_url("file:///srv/imagesX/a", &roots()),
            Err(UrlError::OutsideRoots("/srv/imagesX/a".into()))
        );
        assert_eq!(
            check_url("ftp://h/a", &roots()),
            Err(UrlError::Scheme("ftp".into()))
        );
        assert_eq!(
            check_url("file://evil/srv/images/a", &roots()),
            Err(UrlError::FileHost("evil".into()))
        );
        assert!(matches!(
            check_url("/srv/images/a", &roots()),
            Err(UrlError::Malformed(_))
        ));
        assert_eq!(
            check_url("file:///srv/images/a", &[]),
            Err(UrlError::NoFileRoots)
        );
    }
}
