//! The fleet search: `GET /api/v1/search` (JSON, or CSV with
//! `format=csv` or `Accept: text/csv`) and the Explore page at
//! `/ui/explore`, both over [`crate::explore::Explorer`]'s index and both
//! showing only the states the caller may read (an `outputs` identity sees
//! neither those states nor their resources).

use askama::Template;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{ACCEPT, HeaderMap};
use time::OffsetDateTime;

use super::Viewer;
use super::pages::{Layout, html, human_age, or_dash, render, short_time, state_url};
use crate::explore::{Explorer, Found, Search};
use crate::protocol::ProtocolError;

/// The filters the page's form shows, in its order: parameter, label, hint.
const FILTERS: &[(&str, &str, &str)] = &[
    ("type", "Type", "aws_db_instance"),
    ("provider", "Provider", "hashicorp/aws"),
    ("module", "Module", "module.db"),
    ("address", "Address", "module.db.*"),
    ("key", "Key", "prod/**"),
    ("terraform_version", "Terraform", "<1.5"),
    ("written_before", "Written before", "90d or 2024-06-01"),
    ("locked_for", "Locked for", "2h"),
];

/// Addresses a page row shows before `and N more`.
const ADDRESSES_SHOWN: usize = 20;

/// The query string's parameters, decoded.
fn params(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn search_of(params: &[(String, String)]) -> Result<Search, ProtocolError> {
    Search::parse(
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        OffsetDateTime::now_utc(),
    )
    .map_err(|e| ProtocolError::BadRequest(e.to_string()))
}

/// How long a search waits for its turn before answering 503, as the
/// views that read state bodies do.
const SEARCH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn run(explorer: &Explorer, viewer: &Viewer, search: Search) -> Result<Found, ProtocolError> {
    let viewer = viewer.clone();
    explorer
        .search_in_turn(search, move |state| viewer.may_read(state), SEARCH_WAIT)
        .await
        .ok_or_else(|| {
            ProtocolError::Unavailable(
                "the explorer is busy with other searches; try again shortly".into(),
            )
        })
}

/// Whether the client asked for CSV.
fn wants_csv(params: &[(String, String)], headers: &HeaderMap) -> bool {
    let format = params.iter().rev().find(|(k, _)| k == "format");
    match format {
        Some((_, f)) => f.eq_ignore_ascii_case("csv"),
        None => headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().starts_with("text/csv"))),
    }
}

/// `GET /api/v1/search`.
pub async fn api(
    explorer: &Explorer,
    viewer: &Viewer,
    raw_query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let params = params(raw_query);
    let found = run(explorer, viewer, search_of(&params)?).await?;
    Ok(match wants_csv(&params, headers) {
        true => super::typed(found.to_csv(), "text/csv; charset=utf-8"),
        false => super::api::json_body(&found),
    })
}

struct FilterField {
    name: &'static str,
    label: &'static str,
    hint: &'static str,
    value: String,
}

struct Tally {
    name: String,
    n: usize,
    url: String,
}

struct FoundRow {
    key: String,
    workspace: String,
    url: String,
    serial: String,
    terraform_version: String,
    updated: String,
    writer: String,
    lock: String,
    addresses: Vec<String>,
    more: usize,
}

#[derive(Template)]
#[template(path = "explore.html")]
struct ExplorePage<'a> {
    layout: Layout<'a>,
    filters: Vec<FilterField>,
    complete: bool,
    error: Option<String>,
    total_states: usize,
    total_resources: usize,
    types: Vec<Tally>,
    providers: Vec<Tally>,
    rows: Vec<FoundRow>,
    next_url: Option<String>,
    csv_url: String,
}

/// A URL of `path` with `params`, `extra` replacing any of the same name.
fn url_with(base: &str, path: &str, params: &[(String, String)], extra: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if !v.is_empty() && !extra.iter().any(|(e, _)| e == k) && k != "cursor" && k != "after" {
            query.append_pair(k, v);
        }
    }
    for (k, v) in extra {
        query.append_pair(k, v);
    }
    let query = query.finish();
    match query.is_empty() {
        true => format!("{base}{path}"),
        false => format!("{base}{path}?{query}"),
    }
}

/// `GET /ui/explore`: the form, the counts and one page of results. A
/// filter that cannot be used is shown above an empty result, so the
/// form stays there to correct it.
pub async fn page(
    base: &str,
    explorer: &Explorer,
    viewer: &Viewer,
    raw_query: Option<&str>,
) -> Response<Full<Bytes>> {
    let params = params(raw_query);
    let value = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (found, error) = match search_of(&params) {
        Ok(search) => match run(explorer, viewer, search).await {
            Ok(found) => (Some(found), None),
            Err(busy) => return busy.into_response(),
        },
        Err(e) => (None, Some(e.to_string())),
    };
    let tally = |param: &str, counts: Option<&std::collections::BTreeMap<String, usize>>| {
        counts
            .into_iter()
            .flatten()
            .map(|(name, &n)| Tally {
                name: if name.is_empty() {
                    "(none)".into()
                } else {
                    name.clone()
                },
                n,
                url: url_with(base, "/ui/explore", &params, &[(param, name)]),
            })
            .collect::<Vec<_>>()
    };
    let rows = found
        .iter()
        .flat_map(|f| &f.states)
        .map(|s| FoundRow {
            key: s.key.clone(),
            workspace: s.workspace.clone(),
            url: state_url(base, &s.state),
            serial: or_dash(s.serial),
            terraform_version: s.terraform_version.clone().unwrap_or_else(|| "-".into()),
            updated: short_time(s.updated.as_deref()),
            writer: s.writer.clone().unwrap_or_else(|| "-".into()),
            lock: s.lock.as_ref().map_or(String::new(), |l| {
                format!("{} · {}", l.who, human_age(l.age_seconds))
            }),
            addresses: s
                .resources
                .iter()
                .take(ADDRESSES_SHOWN)
                .map(|r| r.address.clone())
                .collect(),
            more: s.resources.len().saturating_sub(ADDRESSES_SHOWN),
        })
        .collect();
    html(render(&ExplorePage {
        layout: Layout::new(base, "Explore", Some(viewer)),
        filters: FILTERS
            .iter()
            .map(|&(name, label, hint)| FilterField {
                name,
                label,
                hint,
                value: value(name),
            })
            .collect(),
        complete: found.as_ref().is_none_or(|f| f.complete),
        error,
        total_states: found.as_ref().map_or(0, |f| f.total_states),
        total_resources: found.as_ref().map_or(0, |f| f.total_resources),
        types: tally("type", found.as_ref().map(|f| &f.counts.types)),
        providers: tally("provider", found.as_ref().map(|f| &f.counts.providers)),
        rows,
        next_url: found
            .as_ref()
            .and_then(|f| f.next_cursor.as_deref())
            .map(|c| url_with(base, "/ui/explore", &params, &[("cursor", c)])),
        csv_url: url_with(base, "/api/v1/search", &params, &[("format", "csv")]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_is_asked_for_by_parameter_or_accept() {
        let p = |f: &str| vec![("format".to_string(), f.to_string())];
        let mut headers = HeaderMap::new();
        assert!(wants_csv(&p("csv"), &headers));
        assert!(!wants_csv(&p("json"), &headers));
        assert!(!wants_csv(&[], &headers));
        headers.insert(ACCEPT, "text/csv, */*;q=0.1".parse().unwrap());
        assert!(wants_csv(&[], &headers));
        assert!(!wants_csv(&p("json"), &headers), "the parameter wins");
    }

    #[test]
    fn links_keep_the_filters_and_replace_the_cursor() {
        let params = vec![
            ("type".to_string(), "aws_*".to_string()),
            ("cursor".to_string(), "a:default".to_string()),
            ("module".to_string(), String::new()),
        ];
        assert_eq!(
            url_with("/b", "/ui/explore", &params, &[("cursor", "z:dev")]),
            "/b/ui/explore?type=aws_*&cursor=z%3Adev"
        );
    }
}
