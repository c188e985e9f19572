# How attn finds what it builds with: find_package first (Debian, Homebrew, vcpkg and Conan all
# provide config packages), then, if ATTN_FETCH_DEPENDENCIES is on, a download through FetchContent.
# A machine that has neither gets one line naming the package to install, not a page of git errors:
# the archive is downloaded once by hand first, and FetchContent only unpacks it. (The messages
# start with a space because CMake reflows unindented error text over several lines.)

include(FetchContent)

set(ATTN_INSTALL_HINT_Eigen3
  "apt-get install libeigen3-dev | brew install eigen | vcpkg install eigen3")
set(ATTN_INSTALL_HINT_GTest
  "apt-get install libgtest-dev | brew install googletest | vcpkg install gtest")
set(ATTN_INSTALL_HINT_benchmark
  "apt-get install libbenchmark-dev | brew install google-benchmark | vcpkg install benchmark")

# attn_download(<name> <package> <url> <out-var>): the archive's local path, or a fatal one-liner.
function(attn_download name package url out)
  set(what "${package} was not found by find_package")
  if(NOT ATTN_FETCH_DEPENDENCIES)
    message(FATAL_ERROR " attn: ${what} (ATTN_FETCH_DEPENDENCIES is OFF); install it: ${ATTN_INSTALL_HINT_${package}}")
  endif()
  get_filename_component(file "${url}" NAME)
  set(archive "${CMAKE_BINARY_DIR}/_deps/${name}-archive/${file}")
  if(NOT EXISTS "${archive}")
    message(STATUS "attn: ${what}; downloading ${url}")
    file(DOWNLOAD "${url}" "${archive}.part" STATUS status INACTIVITY_TIMEOUT 20 TIMEOUT 300)
    list(GET status 0 code)
    if(NOT code EQUAL 0)
      list(GET status 1 reason)
      file(REMOVE "${archive}.part")
      message(FATAL_ERROR " attn: ${what} and could not be downloaded (${reason}); install it: ${ATTN_INSTALL_HINT_${package}}")
    endif()
    file(RENAME "${archive}.part" "${archive}")
  endif()
  set(${out} "${archive}" PARENT_SCOPE)
endfunction()

macro(attn_require_eigen)
  if(NOT TARGET Eigen3::Eigen)
    find_package(Eigen3 3.4 QUIET NO_MODULE)
  endif()
  if(NOT TARGET Eigen3::Eigen)
    attn_download(eigen Eigen3
      "https://gitlab.com/libeigen/eigen/-/archive/3.4.0/eigen-3.4.0.tar.gz" _attn_eigen_archive)
    # Eigen's own CMake project builds its tests and docs; attn needs its headers alone.
    FetchContent_Declare(attn_eigen URL "${_attn_eigen_archive}")
    FetchContent_GetProperties(attn_eigen)
    if(NOT attn_eigen_POPULATED)
      FetchContent_Populate(attn_eigen)
    endif()
    add_library(Eigen3::Eigen INTERFACE IMPORTED GLOBAL)
    target_include_directories(Eigen3::Eigen SYSTEM INTERFACE "${attn_eigen_SOURCE_DIR}")
  endif()
endmacro()

macro(attn_require_gtest)
  if(NOT TARGET GTest::gtest_main)
    find_package(GTest QUIET)
  endif()
  if(NOT TARGET GTest::gtest_main)
    attn_download(googletest GTest
      "https://github.com/google/googletest/archive/refs/tags/v1.14.0.tar.gz" _attn_gtest_archive)
    set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
    set(gtest_force_shared_crt ON CACHE BOOL "" FORCE)
    FetchContent_Declare(googletest URL "${_attn_gtest_archive}")
    FetchContent_MakeAvailable(googletest)
  endif()
endmacro()

macro(attn_require_benchmark)
  if(NOT TARGET benchmark::benchmark)
    find_package(benchmark QUIET)
  endif()
  if(NOT TARGET benchmark::benchmark)
    attn_download(benchmark benchmark
      "https://github.com/google/benchmark/archive/refs/tags/v1.8.3.tar.gz" _attn_benchmark_archive)
    set(BENCHMARK_ENABLE_TESTING OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_ENABLE_INSTALL OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_ENABLE_GTEST_TESTS OFF CACHE BOOL "" FORCE)
    FetchContent_Declare(benchmark URL "${_attn_benchmark_archive}")
    FetchContent_MakeAvailable(benchmark)
  endif()
endmacro()
