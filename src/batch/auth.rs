//! Shared Key signing for the Batch service.
//!
//! The Batch service signs like Blob storage in outline, but not in detail: its own headers
//! are the `ocp-*` ones (`ocp-date` stands in for `Date`, whose line stays empty), there is no
//! version header, and the key is the Batch account's key, not the storage account's. See
//! "Authenticate requests to the Azure Batch service" in the Batch REST reference; the tests
//! check our signatures against Microsoft's own `azure-batch` Python package.

use crate::secret::Secret;

/// What of a request goes into the signature.
pub struct SignInput<'a> {
    pub method: &'a str,
    /// `If-Unmodified-Since`, as sent, or empty.
    pub if_unmodified_since: &'a str,
    /// Every `ocp-*` header, names lowercase.
    pub ocp_headers: &'a [(String, String)],
    /// The URL path as sent (percent-encoded), e.g. `/jobs/job-1/tasks`.
    pub path: &'a str,
    /// Query parameters, unencoded.
    pub query: &'a [(String, String)],
}

pub fn string_to_sign(account: &str, r: &SignInput<'_>) -> String {
    // VERB, Content-Encoding, Content-Language, Content-Length, Content-MD5, Content-Type,
    // Date, If-Modified-Since, If-Match, If-None-Match, If-Unmodified-Since, Range: we send
    // bodiless GETs and HEADs, so all but the verb and If-Unmodified-Since are empty.
    let mut s = format!(
        "{}\n\n\n\n\n\n\n\n\n\n{}\n\n",
        r.method, r.if_unmodified_since
    );
    // Query names as sent (not lowercased, unlike storage): what Microsoft's SDK signs, and
    // what the service checks.
    crate::blob::auth::push_canonical(&mut s, r.ocp_headers, account, r.path, r.query);
    s
}

/// The `Authorization` header value.
pub fn authorization(account: &str, key: &Secret, r: &SignInput<'_>) -> Result<String, String> {
    crate::blob::auth::shared_key(account, key, &string_to_sign(account, r), "Batch account")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_ocp_headers_and_sorted_query() {
        let headers = vec![
            ("ocp-range".to_string(), "bytes=0-9".to_string()),
            (
                "ocp-date".to_string(),
                "Wed, 02 Dec 2026 10:00:00 GMT".to_string(),
            ),
        ];
        let query = vec![
            ("maxresults".to_string(), "1000".to_string()),
            ("api-version".to_string(), "2025-06-01".to_string()),
            ("$select".to_string(), "id,state".to_string()),
        ];
        let s = string_to_sign(
            "acct",
            &SignInput {
                method: "GET",
                if_unmodified_since: "",
                ocp_headers: &headers,
                path: "/jobs/j1/tasks",
                query: &query,
            },
        );
        assert_eq!(
            s,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nocp-date:Wed, 02 Dec 2026 10:00:00 GMT\n\
             ocp-range:bytes=0-9\n/acct/jobs/j1/tasks\n$select:id,state\n\
             api-version:2025-06-01\nmaxresults:1000"
        );
    }
}
