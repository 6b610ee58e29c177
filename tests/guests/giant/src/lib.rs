//! A service whose `describe` is too big for a host: 300 message kinds (the limit is 256).
//! The host must refuse to load it with a clear reason, not allocate for it.
//!
//! The list below is written out (300 names) because `describe` comes from a constant.

use wasmwire_guest::{Service, export_service};

#[derive(Default)]
struct Giant;

impl Service for Giant {
    const MESSAGES: &'static [&'static str] = &[
        "kind-0", "kind-1", "kind-2", "kind-3", "kind-4", "kind-5", "kind-6", "kind-7", "kind-8",
        "kind-9", "kind-10", "kind-11", "kind-12", "kind-13", "kind-14", "kind-15", "kind-16",
        "kind-17", "kind-18", "kind-19", "kind-20", "kind-21", "kind-22", "kind-23", "kind-24",
        "kind-25", "kind-26", "kind-27", "kind-28", "kind-29", "kind-30", "kind-31", "kind-32",
        "kind-33", "kind-34", "kind-35", "kind-36", "kind-37", "kind-38", "kind-39", "kind-40",
        "kind-41", "kind-42", "kind-43", "kind-44", "kind-45", "kind-46", "kind-47", "kind-48",
        "kind-49", "kind-50", "kind-51", "kind-52", "kind-53", "kind-54", "kind-55", "kind-56",
        "kind-57", "kind-58", "kind-59", "kind-60", "kind-61", "kind-62", "kind-63", "kind-64",
        "kind-65", "kind-66", "kind-67", "kind-68", "kind-69", "kind-70", "kind-71", "kind-72",
        "kind-73", "kind-74", "kind-75", "kind-76", "kind-77", "kind-78", "kind-79", "kind-80",
        "kind-81", "kind-82", "kind-83", "kind-84", "kind-85", "kind-86", "kind-87", "kind-88",
        "kind-89", "kind-90", "kind-91", "kind-92", "kind-93", "kind-94", "kind-95", "kind-96",
        "kind-97", "kind-98", "kind-99", "kind-100", "kind-101", "kind-102", "kind-103",
        "kind-104", "kind-105", "kind-106", "kind-107", "kind-108", "kind-109", "kind-110",
        "kind-111", "kind-112", "kind-113", "kind-114", "kind-115", "kind-116", "kind-117",
        "kind-118", "kind-119", "kind-120", "kind-121", "kind-122", "kind-123", "kind-124",
        "kind-125", "kind-126", "kind-127", "kind-128", "kind-129", "kind-130", "kind-131",
        "kind-132", "kind-133", "kind-134", "kind-135", "kind-136", "kind-137", "kind-138",
        "kind-139", "kind-140", "kind-141", "kind-142", "kind-143", "kind-144", "kind-145",
        "kind-146", "kind-147", "kind-148", "kind-149", "kind-150", "kind-151", "kind-152",
        "kind-153", "kind-154", "kind-155", "kind-156", "kind-157", "kind-158", "kind-159",
        "kind-160", "kind-161", "kind-162", "kind-163", "kind-164", "kind-165", "kind-166",
        "kind-167", "kind-168", "kind-169", "kind-170", "kind-171", "kind-172", "kind-173",
        "kind-174", "kind-175", "kind-176", "kind-177", "kind-178", "kind-179", "kind-180",
        "kind-181", "kind-182", "kind-183", "kind-184", "kind-185", "kind-186", "kind-187",
        "kind-188", "kind-189", "kind-190", "kind-191", "kind-192", "kind-193", "kind-194",
        "kind-195", "kind-196", "kind-197", "kind-198", "kind-199", "kind-200", "kind-201",
        "kind-202", "kind-203", "kind-204", "kind-205", "kind-206", "kind-207", "kind-208",
        "kind-209", "kind-210", "kind-211", "kind-212", "kind-213", "kind-214", "kind-215",
        "kind-216", "kind-217", "kind-218", "kind-219", "kind-220", "kind-221", "kind-222",
        "kind-223", "kind-224", "kind-225", "kind-226", "kind-227", "kind-228", "kind-229",
        "kind-230", "kind-231", "kind-232", "kind-233", "kind-234", "kind-235", "kind-236",
        "kind-237", "kind-238", "kind-239", "kind-240", "kind-241", "kind-242", "kind-243",
        "kind-244", "kind-245", "kind-246", "kind-247", "kind-248", "kind-249", "kind-250",
        "kind-251", "kind-252", "kind-253", "kind-254", "kind-255", "kind-256", "kind-257",
        "kind-258", "kind-259", "kind-260", "kind-261", "kind-262", "kind-263", "kind-264",
        "kind-265", "kind-266", "kind-267", "kind-268", "kind-269", "kind-270", "kind-271",
        "kind-272", "kind-273", "kind-274", "kind-275", "kind-276", "kind-277", "kind-278",
        "kind-279", "kind-280", "kind-281", "kind-282", "kind-283", "kind-284", "kind-285",
        "kind-286", "kind-287", "kind-288", "kind-289", "kind-290", "kind-291", "kind-292",
        "kind-293", "kind-294", "kind-295", "kind-296", "kind-297", "kind-298", "kind-299",
    ];
}

export_service!(Giant);
