/* A stand-in for the macOS SDK's header, for `.ci/macos-check` only:
 * ring's C is compiled for a Mac target on Linux, where no SDK is. */
#pragma once
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_TV 0
#define TARGET_OS_SIMULATOR 0
