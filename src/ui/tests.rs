//! The dashboard's routes and query strings.

use super::*;

fn template(method: Method, path: &str) -> Result<&'static str, u16> {
    route(&method, path)
        .map(|r| r.template())
        .map_err(|e| e.status().as_u16())
}

#[test]
fn dashboard_urls() {
    assert_eq!(template(Method::GET, "/ui/"), Ok("/ui/"));
    assert_eq!(
        template(Method::GET, "/ui/states/a/b.tfstate"),
        Ok("/ui/states/{key}")
    );
    assert_eq!(template(Method::POST, "/ui/locks/a"), Ok("/ui/locks/{key}"));
    assert_eq!(
        template(Method::POST, "/ui/restore/a"),
        Ok("/ui/restore/{key}")
    );
    assert_eq!(
        template(Method::GET, "/api/v1/diff/a"),
        Ok("/api/v1/diff/{key}")
    );
    assert_eq!(template(Method::HEAD, "/api/v1/locks"), Ok("/api/v1/locks"));
    assert_eq!(
        template(Method::GET, "/api/v1/search"),
        Ok("/api/v1/search")
    );
    assert_eq!(template(Method::GET, "/ui/explore"), Ok("/ui/explore"));
    assert_eq!(template(Method::POST, "/api/v1/search"), Err(405));
    assert_eq!(template(Method::POST, "/ui/states/a"), Err(405));
    assert_eq!(template(Method::DELETE, "/api/v1/states/a"), Err(405));
    assert_eq!(template(Method::GET, "/ui/states/"), Err(404));
    assert_eq!(template(Method::GET, "/api/v1/other"), Err(404));
}

#[test]
fn queries() {
    let q = Query::parse(Some("workspace=dev&prefix=team%2F&page=3&from=1&to=4")).unwrap();
    assert_eq!(q.workspace.as_deref(), Some("dev"));
    assert_eq!(
        (q.prefix.as_str(), q.page, q.from, q.to),
        ("team/", 3, Some(1), Some(4))
    );
    let q = Query::parse(Some("workspace=&page=0")).unwrap();
    assert_eq!((q.workspace, q.page), (None, 1));
    assert_eq!(Query::parse(Some("from=x")).unwrap_err().status(), 400);
    let q = Query::parse(Some("workspace=dev")).unwrap();
    assert_eq!(
        q.state("a%2Fb").unwrap(),
        StateRef::parse("a/b", Some("dev")).unwrap()
    );
    assert_eq!(q.state("..%2Fx").unwrap_err().status(), 400);
}
