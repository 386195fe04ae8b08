use super::*;

fn last_error() -> String {
    // SAFETY: dp_last_error returns a NUL-terminated thread-local string.
    unsafe { CStr::from_ptr(dp_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_panic_inside_the_boundary_becomes_internal_with_its_message() {
    let status = boundary(|| panic!("boom at the boundary"));
    assert_eq!(status, dp_status::DP_ERR_INTERNAL);
    assert!(
        last_error().contains("boom at the boundary"),
        "{}",
        last_error()
    );
    let formatted = boundary(|| panic!("formatted {}", 42));
    assert_eq!(formatted, dp_status::DP_ERR_INTERNAL);
    assert!(last_error().contains("formatted 42"), "{}", last_error());
}

#[test]
fn every_error_kind_maps_to_the_status_of_its_code_and_name() {
    for &kind in ErrorKind::ALL {
        let error = Error::new(kind, "the message");
        let text = error.to_string();
        let status = boundary(|| Err(error));
        assert_eq!(status as u32, kind.code(), "{kind:?}");
        assert_eq!(status, dp_status::from(kind));
        assert_eq!(last_error(), text);
        // SAFETY: dp_status_string returns a static NUL-terminated string.
        let name = unsafe { CStr::from_ptr(dp_status_string(kind.code())) };
        assert_eq!(name, kind.status_name(), "{kind:?}");
        assert_eq!(format!("{status:?}").as_str(), name.to_str().unwrap());
    }
    assert_eq!(ErrorKind::ALL.len(), 10);
}

#[test]
fn a_message_with_a_nul_byte_is_kept_readable() {
    boundary(|| Err(Error::internal("before\0after")));
    assert!(last_error().contains("before\\0after"), "{}", last_error());
}
