//! banger library.
