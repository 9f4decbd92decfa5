//! A developer's route: the requests of one developer, in a sandbox many
//! share, carry it as a W3C Baggage member, `baggage: devmesh-route=NAME`.
//! The sandbox's front port of a service sends a request with a route to
//! the copy that route registered (a developer's laptop, through the
//! tunnel), and every other request to the sandbox's own copy. Baggage
//! travels the way `traceparent` does: services that propagate one
//! (OpenTelemetry's SDKs, `devmesh::trace`) propagate the other.

/// The header that carries it.
pub const HEADER: &str = "baggage";
/// The baggage member's key.
pub const MEMBER: &str = "devmesh-route";

/// The route a `baggage` header's value carries, if any: its
/// `devmesh-route` member's value, when that is a valid name.
pub fn of_baggage(baggage: &str) -> Option<&str> {
    baggage.split(',').find_map(|member| {
        let (key, value) = member.split_once('=')?;
        if key.trim() != MEMBER {
            return None;
        }
        // Properties follow a `;`; a route is a DNS label, never encoded.
        let value = value.split(';').next()?.trim();
        crate::name::validate(value).is_ok().then_some(value)
    })
}

/// The `baggage` value a request leaves with for `route`: the one it has
/// when that carries a route already (the caller chose), else its members
/// and the route's. `baggage` is the request's own value, if it has one.
pub fn with_route(baggage: Option<&str>, route: &str) -> String {
    match baggage.map(str::trim).filter(|b| !b.is_empty()) {
        Some(baggage) if of_baggage(baggage).is_some() => baggage.to_owned(),
        Some(baggage) => format!("{baggage},{MEMBER}={route}"),
        None => format!("{MEMBER}={route}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_is_found_among_other_members_and_properties() {
        assert_eq!(of_baggage("devmesh-route=dev-a"), Some("dev-a"));
        assert_eq!(of_baggage("userId=42, devmesh-route = dev-b ;ttl=3,x=y"), Some("dev-b"));
        assert_eq!(of_baggage("userId=42"), None);
        assert_eq!(of_baggage("devmesh-route=not%20a%20name"), None);
        assert_eq!(of_baggage("devmesh-route="), None);
    }

    #[test]
    fn a_route_is_added_once_and_a_callers_is_kept() {
        assert_eq!(with_route(None, "dev-a"), "devmesh-route=dev-a");
        assert_eq!(with_route(Some("userId=42"), "dev-a"), "userId=42,devmesh-route=dev-a");
        assert_eq!(with_route(Some("devmesh-route=dev-b"), "dev-a"), "devmesh-route=dev-b");
    }
}
