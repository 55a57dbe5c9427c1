//! A small client of GitHub's REST API over octocrab: the calls tend's
//! reviews need, with timeouts, retries of rate limits, and errors that say
//! what GitHub refused and how to fix it. Every path parameter is
//! percent-encoded (a branch name holds slashes). The token never appears
//! in an error or a log line.

use std::time::Duration;

use http::StatusCode;
use octocrab::Octocrab;

use crate::state::ReviewOperation;
use serde_json::Value;

/// How long one request may take, start to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a request that GitHub rate-limits.
const ATTEMPTS: u32 = 4;
/// The longest tend waits for a rate limit to lift before giving up.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("invalid GitHub API URL `{url}`: {message}")]
    Config { url: String, message: String },
    #[error("GitHub refused to {op} in {repo}: GitHub Actions is not permitted to create or approve pull requests. Enable it in the repository's Settings › Actions › General › Workflow permissions: \"Allow GitHub Actions to create and approve pull requests\" (for an organization, also in its Actions settings), or use a token of a user or a GitHub App in TEND_GITHUB_TOKEN")]
    ActionsNotPermitted { op: String, repo: String },
    #[error("GitHub rate-limited {op} in {repo} {attempts} times; giving up until the next pass")]
    RateLimited {
        op: String,
        repo: String,
        attempts: u32,
    },
    #[error("GitHub answered {status} to {op} in {repo}: {message}")]
    Status {
        op: String,
        repo: String,
        status: u16,
        message: String,
    },
    #[error("failed to reach GitHub to {op} in {repo}: {message}")]
    Transport {
        op: String,
        repo: String,
        message: String,
    },
}

impl GitHubError {
    /// The HTTP status GitHub answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GitHubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            GitHubError::Status { message, .. } => message,
            _ => "",
        }
    }
}

/// One repository on one GitHub.
pub struct Client {
    octo: Octocrab,
    pub owner: String,
    pub repo: String,
    /// Who tend acts as, once asked.
    login: tokio::sync::OnceCell<String>,
}

/// Who a GitHub Actions job's `GITHUB_TOKEN` acts as.
pub const ACTIONS_BOT: &str = "github-actions[bot]";

/// What keeping one comment takes: nothing (the same text is there), an
/// edit of the comment, or a new one.
pub enum KeptComment {
    Unchanged,
    Edit { path: String },
    Create { path: String },
}

impl KeptComment {
    /// The write to make, if any: (operation, method, path).
    pub fn write(&self) -> Option<(ReviewOperation, Method, &str)> {
        match self {
            KeptComment::Unchanged => None,
            KeptComment::Edit { path } => Some((ReviewOperation::EditComment, Method::Patch, path)),
            KeptComment::Create { path } => Some((ReviewOperation::Comment, Method::Post, path)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Client {
    pub fn new(api_url: &str, repository: &str, token: &str) -> Result<Client, GitHubError> {
        let config = |message: String| GitHubError::Config {
            url: api_url.to_string(),
            message,
        };
        let (owner, repo) = repository
            .split_once('/')
            .ok_or_else(|| config(format!("repository `{repository}` is not owner/name")))?;
        let base = api_url.trim_end_matches('/');
        let octo = Octocrab::builder()
            .base_uri(base)
            .map_err(|e| config(e.to_string()))?
            .personal_token(token.to_string())
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .set_write_timeout(Some(REQUEST_TIMEOUT))
            .build()
            .map_err(|e| config(e.to_string()))?;
        Ok(Client {
            octo,
            owner: owner.to_string(),
            repo: repo.to_string(),
            login: tokio::sync::OnceCell::new(),
        })
    }

    /// `/repos/{owner}/{repo}{rest}`.
    pub fn path(&self, rest: &str) -> String {
        format!("/repos/{}/{}{rest}", enc(&self.owner), enc(&self.repo))
    }

    /// One call; `op` says what it is for in errors ("open the pull
    /// request"). Rate limits (429, or 403 with the limit spent) are waited
    /// out and retried; anything else GitHub refuses is an error with its
    /// message.
    pub async fn call(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, GitHubError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (status, headers, text) = self.send(op, method, path, body).await?;
            if status.is_success() {
                return Ok(if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                });
            }
            let message = error_message(&text);
            if status == StatusCode::FORBIDDEN
                && message.contains("not permitted to create or approve pull requests")
            {
                return Err(GitHubError::ActionsNotPermitted {
                    op: op.to_string(),
                    repo: self.full_name(),
                });
            }
            if let Some(wait) = rate_limit_wait(status, &headers, &message, attempt) {
                if attempt >= ATTEMPTS {
                    return Err(GitHubError::RateLimited {
                        op: op.to_string(),
                        repo: self.full_name(),
                        attempts: attempt,
                    });
                }
                tracing::warn!(op, wait = ?wait, "GitHub rate-limited the request; waiting.");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(GitHubError::Status {
                op: op.to_string(),
                repo: self.full_name(),
                status: status.as_u16(),
                message,
            });
        }
    }

    /// Who tend acts as on GitHub: `TEND_GITHUB_LOGIN` when set, else the
    /// login of the token's user (`GET /user`). A token that may not read
    /// it (GitHub Actions' `GITHUB_TOKEN`, 403) acts as
    /// `github-actions[bot]`. What tend recognises as its own (comments,
    /// pull requests, issues) must also be by this login: a hidden marker
    /// alone can be written by anyone.
    pub async fn login(&self) -> Result<&str, GitHubError> {
        self.login
            .get_or_try_init(|| async {
                if let Some(login) = std::env::var("TEND_GITHUB_LOGIN")
                    .ok()
                    .filter(|l| !l.trim().is_empty())
                {
                    return Ok(login.trim().to_string());
                }
                match self
                    .call("read who the token is", Method::Get, "/user", None)
                    .await
                {
                    Ok(user) => Ok(user["login"].as_str().unwrap_or_default().to_string()),
                    Err(e) if e.status() == Some(403) => Ok(ACTIONS_BOT.to_string()),
                    Err(e) => Err(e),
                }
            })
            .await
            .map(String::as_str)
    }

    /// What keeping one comment, found by `marker` among the comments tend
    /// wrote, on issue or pull request `number` at `body` takes. Comments
    /// of anyone else are never edited, whatever they carry.
    pub async fn kept_comment(
        &self,
        number: i64,
        marker: &str,
        body: &str,
    ) -> Result<KeptComment, GitHubError> {
        let login = self.login().await?.to_string();
        let mut mine = None;
        for page in 1..=20 {
            let comments = self
                .call(
                    "list comments",
                    Method::Get,
                    &self.path(&format!(
                        "/issues/{number}/comments?per_page=100&page={page}"
                    )),
                    None,
                )
                .await?;
            let list = comments.as_array().cloned().unwrap_or_default();
            mine = list
                .iter()
                .find(|c| {
                    c["user"]["login"].as_str() == Some(login.as_str())
                        && c["body"].as_str().is_some_and(|b| b.contains(marker))
                })
                .cloned();
            if mine.is_some() || list.len() < 100 {
                break;
            }
        }
        Ok(match mine {
            Some(c) if c["body"].as_str().map(str::trim_end) == Some(body.trim_end()) => {
                KeptComment::Unchanged
            }
            Some(c) => KeptComment::Edit {
                path: self.path(&format!(
                    "/issues/comments/{}",
                    c["id"].as_i64().unwrap_or(0)
                )),
            },
            None => KeptComment::Create {
                path: self.path(&format!("/issues/{number}/comments")),
            },
        })
    }

    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    async fn send(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, http::HeaderMap, String), GitHubError> {
        let transport = |message: String| GitHubError::Transport {
            op: op.to_string(),
            repo: self.full_name(),
            message,
        };
        let request = async {
            let response = match method {
                Method::Get => self.octo._get(path).await,
                Method::Post => self.octo._post(path, body).await,
                Method::Patch => self.octo._patch(path, body).await,
                Method::Delete => self.octo._delete(path, body).await,
            }
            .map_err(|e| transport(crate::vocab::causes(&e)))?;
            let status = response.status();
            let headers = response.headers().clone();
            let text = self
                .octo
                .body_to_string(response)
                .await
                .map_err(|e| transport(crate::vocab::causes(&e)))?;
            Ok((status, headers, text))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, request)
            .await
            .map_err(|_| transport(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))?
    }
}

/// How long to wait before retrying a rate-limited request, or `None` when
/// the answer is not a rate limit.
fn rate_limit_wait(
    status: StatusCode,
    headers: &http::HeaderMap,
    message: &str,
    attempt: u32,
) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (header("x-ratelimit-remaining") == Some(0)
                || header("retry-after").is_some()
                || message.to_ascii_lowercase().contains("rate limit")));
    if !limited {
        return None;
    }
    let wait = if let Some(secs) = header("retry-after") {
        Duration::from_secs(secs)
    } else if let Some(reset) = header("x-ratelimit-reset") {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Duration::from_secs(reset.saturating_sub(now))
    } else {
        // Secondary limits without a hint: GitHub asks for at least a
        // minute; back off exponentially from a second, jittered.
        let base = 1u64 << (attempt - 1).min(5);
        Duration::from_millis(base * 1000 + rand::random_range(0..250))
    };
    Some(wait.clamp(Duration::from_millis(100), MAX_WAIT))
}

/// GitHub's message, with the messages of its `errors` ("Validation
/// Failed: A pull request already exists for …").
fn error_message(text: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return text.chars().take(300).collect();
    };
    let mut message = v["message"].as_str().unwrap_or("").to_string();
    for e in v["errors"].as_array().into_iter().flatten() {
        let detail = e["message"].as_str().map(str::to_string).or_else(|| {
            Some(format!(
                "{} {} {}",
                e["resource"].as_str()?,
                e["field"].as_str().unwrap_or(""),
                e["code"].as_str().unwrap_or("")
            ))
        });
        if let Some(d) = detail {
            message.push_str(": ");
            message.push_str(d.trim());
        }
    }
    message
}

/// Percent-encodes one path parameter: everything but unreserved
/// characters, slashes included (`heads/tend/review/…` is one parameter).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A query string from pairs, each value encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_are_encoded_whole() {
        assert_eq!(
            enc("heads/tend/review/host.File/motd"),
            "heads%2Ftend%2Freview%2Fhost.File%2Fmotd"
        );
        assert_eq!(
            query(&[("head", "o:a/b"), ("state", "all")]),
            "?head=o%3Aa%2Fb&state=all"
        );
    }

    #[test]
    fn rate_limits_are_told_apart_from_refusals() {
        let mut h = http::HeaderMap::new();
        assert_eq!(
            rate_limit_wait(
                StatusCode::FORBIDDEN,
                &h,
                "Resource not accessible by integration",
                1
            ),
            None
        );
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(
            rate_limit_wait(StatusCode::TOO_MANY_REQUESTS, &h, "", 1),
            Some(Duration::from_secs(2))
        );
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        assert!(rate_limit_wait(StatusCode::FORBIDDEN, &h, "API rate limit exceeded", 1).is_some());
    }
}
