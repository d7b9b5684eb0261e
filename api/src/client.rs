//! `ApiClient`: log in, keep the JWT, call a route, fail over between base URLs.
