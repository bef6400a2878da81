//! Shared Key signing for the Blob service.
//!
//! The string to sign is built from the request as we are about to send it (we set every
//! header ourselves, so there is nothing reqwest adds that the service would sign
//! differently). See "Authorize with Shared Key" in the Azure Storage REST reference.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// What of a request goes into the signature.
pub struct SignInput<'a> {
    pub method: &'a str,
    /// Content-Length; 0 is signed as the empty string (API versions since 2015-02-21).
    pub content_length: u64,
    pub content_type: &'a str,
    pub if_match: &'a str,
    pub if_none_match: &'a str,
    /// Every `x-ms-*` header, names lowercase.
    pub ms_headers: &'a [(String, String)],
    /// The URL path as sent (percent-encoded), e.g. `/devstoreaccount1/c/a%20b`.
    pub path: &'a str,
    /// Query parameters, unencoded.
    pub query: &'a [(String, String)],
}

pub fn string_to_sign(account: &str, r: &SignInput<'_>) -> String {
    let length = if r.content_length == 0 {
        String::new()
    } else {
        r.content_length.to_string()
    };
    let mut s = format!(
        "{}\n\n\n{}\n\n{}\n\n\n{}\n{}\n\n\n",
        r.method, length, r.content_type, r.if_match, r.if_none_match
    );
    let query: Vec<(String, String)> = r
        .query
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    push_canonical(&mut s, r.ms_headers, account, r.path, &query);
    s
}

/// The end of a Shared Key string to sign, as storage and the Batch service both build it:
/// the service's own headers (names lowercase) sorted as `name:value` lines, then
/// `/{account}{path}`, then each query parameter as `\n{name}:{value}`, sorted.
pub fn push_canonical(
    s: &mut String,
    headers: &[(String, String)],
    account: &str,
    path: &str,
    query: &[(String, String)],
) {
    let mut headers: Vec<_> = headers.iter().collect();
    headers.sort();
    for (k, v) in headers {
        s.push_str(k);
        s.push(':');
        s.push_str(v.trim());
        s.push('\n');
    }
    s.push('/');
    s.push_str(account);
    s.push_str(path);
    let mut query: Vec<_> = query.iter().collect();
    query.sort();
    for (k, v) in query {
        s.push('\n');
        s.push_str(k);
        s.push(':');
        s.push_str(v);
    }
}

/// The `Authorization` header value. `key` was checked to be base64 when the config loaded.
pub fn authorization(account: &str, key: &Secret, r: &SignInput<'_>) -> Result<String, String> {
    shared_key(account, key, &string_to_sign(account, r), "storage")
}

/// `SharedKey account:signature`, the HMAC-SHA256 of `to_sign` with the base64 `key` (the
/// scheme of storage and of the Batch service alike; `whose` names the key in errors).
pub fn shared_key(
    account: &str,
    key: &Secret,
    to_sign: &str,
    whose: &str,
) -> Result<String, String> {
    let key = STANDARD
        .decode(key.expose())
        .map_err(|_| format!("the {whose} key is not valid base64"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(to_sign.as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!("SharedKey {account}:{sig}"))
}

/// An account SAS for the blob service (signed version 2018-11-09), e.g. for handing a
/// tool read-only access: `permissions` like `rl`, `expiry` like `2030-01-01T00:00:00Z`.
pub fn account_sas(
    account: &str,
    key: &Secret,
    permissions: &str,
    expiry: &str,
) -> Result<String, String> {
    let key = STANDARD
        .decode(key.expose())
        .map_err(|_| "the storage key is not valid base64".to_string())?;
    let (sv, ss, srt) = ("2018-11-09", "b", "sco");
    let to_sign = format!("{account}\n{permissions}\n{ss}\n{srt}\n\n{expiry}\n\n\n{sv}\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(to_sign.as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!(
        "sv={sv}&ss={ss}&srt={srt}&sp={permissions}&se={}&sig={}",
        urlencoding::encode(expiry),
        urlencoding::encode(&sig)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_string_matches_the_documented_shape() {
        let headers = vec![
            ("x-ms-version".to_string(), "2015-02-21".to_string()),
            (
                "x-ms-date".to_string(),
                "Fri, 26 Jun 2015 23:39:12 GMT".to_string(),
            ),
        ];
        let query = vec![
            ("restype".to_string(), "container".to_string()),
            ("comp".to_string(), "metadata".to_string()),
            ("timeout".to_string(), "20".to_string()),
        ];
        let s = string_to_sign(
            "myaccount",
            &SignInput {
                method: "GET",
                content_length: 0,
                content_type: "",
                if_match: "",
                if_none_match: "",
                ms_headers: &headers,
                path: "/mycontainer",
                query: &query,
            },
        );
        assert_eq!(
            s,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\n\
             x-ms-version:2015-02-21\n/myaccount/mycontainer\ncomp:metadata\n\
             restype:container\ntimeout:20"
        );
    }
}
