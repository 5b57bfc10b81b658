//! Kubernetes at the edges: objects → policy structs ([`convert`], [`quantity`]), the scheduler's
//! view of the cluster ([`cache`], joining what the API says ([`store`]), what this scheduler has
//! taken on top of it ([`overlay`]) and the agents' reports ([`power`])) fed by [`watch`], volume
//! claims ([`claims`]), leader election ([`leader`]), pod [`events`] and the energy labels on
//! nodes ([`published`], written by the [`adapter`]) and the [`offloader`]'s evictions, all
//! through bounded [`clients`].
pub mod adapter;
pub mod cache;
pub mod claims;
pub mod clients;
pub mod convert;
pub mod events;
pub mod leader;
pub mod offloader;
pub mod overlay;
pub mod power;
pub mod published;
pub mod quantity;
pub mod rate;
pub mod store;
pub mod watch;
